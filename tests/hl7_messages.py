"""HL7 v2 messages for the tests, the demo's shape and the benchmark.

`EXAMPLE_A01` is the ADT^A01 example published in the HL7 v2 standard (chapter 2, the
"Good Health Hospital" message, Adam Everyman); `EXAMPLE_A40` follows chapter 3's merge
example. `adt()` builds one for any patient.
"""

from __future__ import annotations

EXAMPLE_A01 = (
    "MSH|^~\\&|ADT1|GOOD HEALTH HOSPITAL|GHH LAB, INC.|GOOD HEALTH HOSPITAL|"
    "198808181126|SECURITY|ADT^A01^ADT_A01|MSG00001|P|2.8||\r"
    "EVN|A01|200708181123||\r"
    "PID|1||PATID1234^5^M11^ADT1^MR^GOOD HEALTH HOSPITAL~123456789^^^USSSA^SS||"
    "EVERYMAN^ADAM^A^III||19610615|M||C|2222 HOME STREET^^GREENSBORO^NC^27401-1020|GL|"
    "(555) 555-2004|(555)555-2004||S||PATID12345001^2^M10^ADT1^AN^A|444333333|987654^NC|\r"
    "NK1|1|NUCLEAR^NELDA^W|SPO^SPOUSE||||NK^NEXT OF KIN\r"
    "PV1|1|I|2000^2012^01||||004777^ATTEND^AARON^A|||SUR||||ADM|A0|\r"
).encode("ascii")

EXAMPLE_A40 = (
    "MSH|^~\\&|REGADT|MCM|RSP1P8|MCM|200301051530|SEC|ADT^A40^ADT_A39|00000003|P|2.6\r"
    "EVN|A40|200301051530\r"
    "PID|||MR1^^^XYZ^MR||EVERYWOMAN^EVE|||||||||||||ACCT1\r"
    "MRG|MR2^^^XYZ^MR||ACCT1\r"
).encode("ascii")


def adt(
    control_id: str,
    patient_id: str,
    *,
    event: str = "A08",
    family: str = "Horvat",
    given: str = "Ana",
    birth: str = "19900115",
    mobile: str = "+385912345678",
    email: str = "",
    merged_id: str | None = None,
    charset: str = "",
    sender: str = "EHR",
) -> str:
    """One ADT message (text; encode it with the charset it names)."""
    msg_type = "ADT^A40^ADT_A39" if event == "A40" else f"ADT^{event}^ADT_A01"
    phones = f"^PRN^CP^^^^^^^^^{mobile}" if mobile else ""
    if email:
        phones = f"{phones}~^NET^Internet^{email}" if phones else f"^NET^Internet^{email}"
    segments = [
        f"MSH|^~\\&|{sender}|CLINIC|SYNCD|VOXARES|20261204120000||{msg_type}|{control_id}|P|2.5.1"
        + (f"||||||{charset}" if charset else ""),
        f"EVN|{event}|20261204120000",
        f"PID|1||{patient_id}^^^CLINIC^MR||{family}^{given}^^^^^L||{birth}|F|||||{phones}",
    ]
    if merged_id is not None:
        segments.append(f"MRG|{merged_id}^^^CLINIC^MR")
    return "\r".join(segments) + "\r"
