"""DNS numbers in one place: record types, response codes, opcodes, classes and
header flag bits (RFC 1035, 6895 and the IANA DNS parameters registry).

Every module names these rather than writing the numbers: ``NXDOMAIN``, not 3.
"""

from __future__ import annotations

# --- header flag bits, in the 16-bit flags word ------------------------------
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_AD = 0x0020
FLAG_CD = 0x0010
FLAG_NAMES = ((FLAG_AA, "AA"), (FLAG_TC, "TC"), (FLAG_RD, "RD"), (FLAG_RA, "RA"),
              (FLAG_AD, "AD"), (FLAG_CD, "CD"))

# --- response codes -----------------------------------------------------------
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
RCODES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS",
    17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG", 22: "BADTRUNC",
    23: "BADCOOKIE",
}

# --- record types -------------------------------------------------------------
A, NS, CNAME, SOA, NULL, PTR, MX, TXT, KEY, AAAA, SRV = 1, 2, 5, 6, 10, 12, 15, 16, 25, 28, 33
OPT, SPF, ANY, PRIVATE = 41, 99, 255, 65399
QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 13: "HINFO", 15: "MX",
    16: "TXT", 17: "RP", 18: "AFSDB", 24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC", 33: "SRV",
    35: "NAPTR", 36: "KX", 37: "CERT", 39: "DNAME", 41: "OPT", 42: "APL", 43: "DS",
    44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID",
    50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 59: "CDS",
    60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS",
    99: "SPF", 249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR", 253: "MAILB", 255: "ANY",
    256: "URI", 257: "CAA",
}

OPCODES = {0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE", 6: "DSO"}
CLASSES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}

# --- ports --------------------------------------------------------------------
DNS_PORT, MDNS_PORT, LLMNR_PORT, DOT_PORT, HTTPS_PORT = 53, 5353, 5355, 853, 443


def qtype_name(t: int) -> str:
    return QTYPES.get(t) or f"TYPE{t}"


def rcode_name(r: int) -> str:
    return RCODES.get(r) or f"RCODE{r}"
