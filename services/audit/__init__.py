"""Tamper evidence and audit: signatures and per-child hash chains on every event, signed seals of
the whole log, verifying reads, the access trail, and the auditor's views (state as of a moment,
FHIR export, timeline, projections). docs/decisions/0013-tamper-evidence.md."""
