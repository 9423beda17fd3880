"""Which lines a coded service becomes, by component, place of service and who bills.

domain-billing.md s. 4: a freestanding centre that owns the equipment bills split codes global
(no modifier); in a hospital the physician bills -26 and the hospital the technical side with
-TC. Technical-only and professional-only codes never take -TC / -26 themselves (Medicare
carrier guidance); a rule's own ``modifiers`` (77387-26 from 2026) are always appended.
"""

from __future__ import annotations

from services.billing.domain.policy import BillingSettings
from services.billing.domain.ruleset import Rule


def lines_for(rule: Rule, settings: BillingSettings) -> list[tuple[str, ...]]:
    """The modifier sets of the lines this practice bills for one service (empty: none)."""
    own = rule.modifiers
    if rule.component == "split":
        if settings.global_billing:
            return [own]
        lines = []
        if "professional" in settings.bills:
            lines.append(("26", *own))
        if "technical" in settings.bills:
            lines.append(("TC", *own))
        return lines
    if rule.component == "professional":
        return [own] if "professional" in settings.bills else []
    if rule.component == "technical":
        return [own] if "technical" in settings.bills else []
    return []
