"""What a running service holds besides its own logic: settings, the database engine and its
sessions, the NATS link and the outbox relay. A service's ``create_app`` takes a ``Runtime``
(or builds one), so tests can build the REST app on a runtime whose background tasks never
start: no NATS and no consumer needed to test an endpoint.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.consumer import ConsumerMetrics
from shared.db import make_engine, make_relaxed_engine, session_factory
from shared.jetstream import NatsLink
from shared.outbox import OutboxRelay, outbox_info, prune_inbox
from shared.periodic import every
from shared.settings import RtopsSettings
from shared.tables import KitTables
from shared.web import background_lifespan, create_app, readiness_checks

Task = Coroutine[Any, Any, None]


@dataclass
class Runtime:
    service: str
    settings: RtopsSettings
    tables: KitTables
    engine: Engine
    factory: sessionmaker[Session]
    link: NatsLink
    relay: OutboxRelay
    registry: CollectorRegistry

    @classmethod
    def create(
        cls,
        service: str,
        settings: RtopsSettings,
        tables: KitTables,
        *,
        engine: Engine | None = None,
    ) -> Runtime:
        """Nothing connects yet: the engine's pool opens on first use, NATS when the app's
        lifespan runs the link. ``engine``: a database a test already set up."""
        engine = engine or make_engine(settings, service)
        factory = session_factory(engine, **outbox_info(tables.outbox, service))
        link = NatsLink(settings, name=service)
        return cls(
            service=service,
            settings=settings,
            tables=tables,
            engine=engine,
            factory=factory,
            link=link,
            relay=OutboxRelay(factory, tables.outbox, link.publish),
            registry=CollectorRegistry(),
        )

    def app(
        self,
        *,
        title: str,
        routers: Sequence[APIRouter],
        tasks: Callable[[], Sequence[Task]] | None = None,
        on_start: Callable[[FastAPI], None] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> FastAPI:
        """The service's FastAPI app (health, readiness, metrics, problems, auth). With
        ``tasks`` its lifespan keeps the NATS link, the outbox relay and those tasks running;
        without, it serves requests only (tests, benchmarks)."""
        lifespan = None
        if tasks is not None:
            lifespan = background_lifespan(
                link=self.link,
                close=self.close,
                tasks=lambda: (self.relay.run(), *tasks()),
                on_start=on_start,
                on_stop=on_stop,
            )
        app = create_app(
            title=title,
            settings=self.settings,
            registry=self.registry,
            readiness=readiness_checks(self.engine, self.link),
            routers=routers,
            lifespan=lifespan,
        )
        app.state.runtime = self
        app.state.session_factory = self.factory
        return app

    def inbox_pruning(self, interval_s: float = 3600.0) -> Task:
        """The periodic task that keeps the inbox from growing with the history (a service
        that consumes events runs it beside its consumer)."""
        return every(
            interval_s,
            "prune the processed-event inbox",
            lambda: prune_inbox(self.factory, self.tables.processed_event),
        )

    @functools.cached_property
    def consumer_metrics(self) -> ConsumerMetrics:
        """The consumers' metrics in this service's registry (created once)."""
        return ConsumerMetrics(self.registry)

    @functools.cached_property
    def relaxed_engine(self) -> Engine:
        """``make_relaxed_engine`` of this service's database (made on first use, closed with
        the runtime): one-statement writes of facts that can be rebuilt."""
        return make_relaxed_engine(self.settings, self.service)

    def close(self) -> None:
        """The database pools (the lifespan's end; tests that build an app without it)."""
        self.engine.dispose()
        if "relaxed_engine" in self.__dict__:
            self.relaxed_engine.dispose()
