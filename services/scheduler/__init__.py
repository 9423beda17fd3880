"""The scheduler: simulation CT booking with rooms, staff, devices, consents and
proceduralist prerequisites."""
