"""The closed lists of the access trail: why a person reads a child's data, and in which role.
(Light: the CLI builds its options from them without loading the bus client.)"""

from enum import StrEnum


class Purpose(StrEnum):
    CASE_WORK = "case_work"
    "The reader works on this child's case."
    SAFEGUARDING_REVIEW = "safeguarding_review"
    AUDIT = "audit"
    COURT_ORDER = "court_order"
    SUBJECT_ACCESS_REQUEST = "subject_access_request"
    "The child or guardian asked for their data."
    INCIDENT_INVESTIGATION = "incident_investigation"


class Role(StrEnum):
    CASEWORKER = "caseworker"
    SUPERVISOR = "supervisor"
    AUDITOR = "auditor"
    DATA_PROTECTION_OFFICER = "data_protection_officer"
    OPERATOR = "operator"
