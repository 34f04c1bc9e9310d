"""The call model and its effects: live calls from ESL events (registry, model, reconcile,
channels), what acts on them (policing: caps and max duration; originate: placing calls)."""
