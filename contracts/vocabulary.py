"""The shared vocabulary of the wire: sectors, the pilot's six vulnerability dimensions, the referral
statuses (FHIR Task.status), and the small service catalogue each sector offers.

Codes only, never free text: a reason or an outcome is a code from a closed list, so no personal data
can slip into the log through a note field.
"""

from enum import StrEnum


class Sector(StrEnum):
    SOCIAL = "social"
    HEALTH = "health"
    EDUCATION = "education"
    JUSTICE = "justice"


class Dimension(StrEnum):
    """The six vulnerability dimensions of the Bacău community-services pilot."""

    POVERTY = "poverty"
    HEALTH = "health"
    EDUCATION = "education"
    HOUSING = "housing"
    RISK_BEHAVIOUR = "risk_behaviour"
    FAMILY_AND_SOCIAL = "family_and_social"


class Urgency(StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"
    EMERGENCY = "emergency"


class LegalBasis(StrEnum):
    """Why sharing this referral is lawful: consent of the legal guardian, or a statutory duty."""

    GUARDIAN_CONSENT = "guardian_consent"
    CHILD_PROTECTION_DUTY = "child_protection_duty"
    VITAL_INTEREST = "vital_interest"


class Status(StrEnum):
    """The business status of a referral, named as HL7 FHIR Task.status names it."""

    REQUESTED = "requested"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    IN_PROGRESS = "in-progress"
    ON_HOLD = "on-hold"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ENTERED_IN_ERROR = "entered-in-error"


class Deadline(StrEnum):
    """A follow-up deadline of an open referral (services/rules/deadlines.py holds the table)."""

    RECEIVED = "received"
    "The receiving system acknowledges delivery (referral.received)."
    DECIDED = "decided"
    "The receiver accepts or rejects."
    RESPOND_BY = "respond_by"
    "The referrer's own `respond_by` for the decision, when it set one."
    COMPLETED = "completed"
    "The referral is closed (completed, failed, cancelled...)."


TERMINAL_STATUSES = frozenset(
    {Status.REJECTED, Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.ENTERED_IN_ERROR}
)


class RejectReason(StrEnum):
    NO_CAPACITY = "no_capacity"
    NOT_ELIGIBLE = "not_eligible"
    OUT_OF_AREA = "out_of_area"
    ALREADY_SERVED = "already_served"
    WRONG_SECTOR = "wrong_sector"
    INSUFFICIENT_INFORMATION = "insufficient_information"


class HoldReason(StrEnum):
    WAITING_FOR_DOCUMENTS = "waiting_for_documents"
    FAMILY_UNREACHABLE = "family_unreachable"
    WAITING_LIST = "waiting_list"


class Outcome(StrEnum):
    SERVICE_DELIVERED = "service_delivered"
    PARTIALLY_DELIVERED = "partially_delivered"
    ONGOING_SUPPORT_ARRANGED = "ongoing_support_arranged"


class FailReason(StrEnum):
    FAMILY_DECLINED = "family_declined"
    FAMILY_MOVED = "family_moved"
    LOST_CONTACT = "lost_contact"
    SERVICE_UNAVAILABLE = "service_unavailable"


class CancelReason(StrEnum):
    NO_LONGER_NEEDED = "no_longer_needed"
    CONSENT_WITHDRAWN = "consent_withdrawn"
    DUPLICATE_REFERRAL = "duplicate_referral"
    CHILD_MOVED = "child_moved"


class ErrorReason(StrEnum):
    WRONG_CHILD = "wrong_child"
    DATA_ENTRY_MISTAKE = "data_entry_mistake"
    DUPLICATE_RECORD = "duplicate_record"


class BasicService(StrEnum):
    """The basic services a community team delivers itself (the Bacău pilot counted 550,000)."""

    INFORMATION = "information"
    COUNSELLING = "counselling"
    ACCOMPANIMENT = "accompaniment"
    MONITORING = "monitoring"


class Guardian(StrEnum):
    """Who gave or withdrew consent: a role, never a person."""

    PARENT = "parent"
    LEGAL_GUARDIAN = "legal_guardian"
    CHILD_OVER_14 = "child_over_14"
    CHILD_PROTECTION_AUTHORITY = "child_protection_authority"


# What each sector can be asked for. A referral names one of these; a request for a service the
# receiving sector does not offer is refused on append.
SERVICE_CATALOGUE: dict[Sector, tuple[str, ...]] = {
    Sector.SOCIAL: (
        "social_benefits",
        "family_counselling",
        "child_protection_assessment",
        "emergency_housing",
        "material_support",
    ),
    Sector.HEALTH: (
        "family_doctor_registration",
        "vaccination",
        "health_assessment",
        "mental_health_support",
        "disability_assessment",
    ),
    Sector.EDUCATION: (
        "school_enrolment",
        "school_mediation",
        "remedial_education",
        "school_counselling",
        "kindergarten_place",
    ),
    Sector.JUSTICE: (
        "birth_registration",
        "identity_documents",
        "legal_aid",
        "probation_support",
    ),
}
