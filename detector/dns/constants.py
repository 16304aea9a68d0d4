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
# the mnemonics BIND (dig) knows, so that type bitmaps read as dig prints them
QTYPES = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR",
    10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT", 17: "RP",
    18: "AFSDB", 19: "X25", 20: "ISDN", 21: "RT", 22: "NSAP", 23: "NSAP-PTR", 24: "SIG",
    25: "KEY", 26: "PX", 27: "GPOS", 28: "AAAA", 29: "LOC", 30: "NXT", 31: "EID", 32: "NIMLOC",
    33: "SRV", 34: "ATMA", 35: "NAPTR", 36: "KX", 37: "CERT", 38: "A6", 39: "DNAME", 40: "SINK",
    41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG", 47: "NSEC",
    48: "DNSKEY", 49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA",
    55: "HIP", 56: "NINFO", 57: "RKEY", 58: "TALINK", 59: "CDS", 60: "CDNSKEY",
    61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS", 99: "SPF",
    100: "UINFO", 101: "UID", 102: "GID", 103: "UNSPEC", 104: "NID", 105: "L32", 106: "L64",
    107: "LP", 108: "EUI48", 109: "EUI64", 249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR",
    253: "MAILB", 254: "MAILA", 255: "ANY", 256: "URI", 257: "CAA", 258: "AVC", 259: "DOA",
    260: "AMTRELAY", 261: "RESINFO", 262: "WALLET", 32768: "TA", 32769: "DLV",
}

OPCODES = {0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE", 6: "DSO"}
CLASSES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}

# --- ports --------------------------------------------------------------------
DNS_PORT, MDNS_PORT, LLMNR_PORT, DOT_PORT, HTTPS_PORT = 53, 5353, 5355, 853, 443


def qtype_name(t: int) -> str:
    return QTYPES.get(t) or f"TYPE{t}"


def rcode_name(r: int) -> str:
    return RCODES.get(r) or f"RCODE{r}"

# --- EDNS options (RFC 6891 6.1.2 and the IANA registry), by code -------------
EDNS_OPTIONS = {
    3: "NSID", 5: "DAU", 6: "DHU", 7: "N3U", 8: "ECS", 9: "EXPIRE", 10: "COOKIE",
    11: "TCP-KEEPALIVE", 12: "PADDING", 13: "CHAIN", 14: "KEY-TAG", 15: "EDE",
}
