"""Checks a carehub calendar feed (iCalendar, RFC 5545) with two libraries we did not write, PyPI
vobject and icalendar, pinned by scripts/ical/install.sh.

Usage: check.py FILE
Exits 0 and prints one JSON object on stdout when every check passes:
  {"events": [{"uid", "start_utc", "end_utc", "status", "summary", "sequence"}, ...],
   "tzids": [TZID of each VTIMEZONE], "calname": X-WR-CALNAME as vobject reads it, or null}
with instants as "YYYY-MM-DDTHH:MM:SSZ", as icalendar reads them (TZID resolved through the
zoneinfo database), and text unescaped. Otherwise exits 1 and prints one line per problem on stderr.

Checks:
- octets: every line ends with CRLF (no bare LF or CR), is at most 75 octets, and is valid UTF-8
  on its own (a fold never splits a character); no empty content lines;
- vobject: `readComponents(validate=True)` finds exactly one VCALENDAR, and its serialization
  reads back (validated) with the same events at the same instants;
- icalendar: `Calendar.from_ical` parses without recorded errors; PRODID and VERSION:2.0; every
  VEVENT has UID (unique), DTSTAMP and LAST-MODIFIED (if present) in UTC, DTSTART and DTEND as
  zoned date-times with DTEND after DTSTART, and a STATUS of CONFIRMED, TENTATIVE or CANCELLED;
- time zones: every TZID= parameter names a VTIMEZONE of the feed; each VTIMEZONE has
  observances with DTSTART, TZOFFSETFROM and TZOFFSETTO, starting no later than any local time
  that refers to it; and each event's start and end are the same instant read three ways: by
  zoneinfo (the IANA database, through icalendar), by icalendar from the feed's VTIMEZONE alone
  and by vobject (dateutil) from the feed's VTIMEZONE alone.
"""

import datetime
import json
import sys

import icalendar
import vobject
from icalendar.timezone import tzp

MAX_OCTETS = 75
UTC = datetime.timezone.utc
STATUSES = {"CONFIRMED", "TENTATIVE", "CANCELLED"}


def utc_text(dt):
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_octets(data, problems):
    """Line structure, on the raw bytes (the parsers forgive what clients may not)."""
    if not data:
        problems.append("the file is empty")
        return
    if not data.endswith(b"\r\n"):
        problems.append("the last line does not end with CRLF")
    physical = data.split(b"\r\n")
    if physical[-1] == b"":
        physical.pop()
    for number, line in enumerate(physical, 1):
        if b"\n" in line:
            problems.append(f"line {number}: bare LF (line break without CR)")
        if b"\r" in line:
            problems.append(f"line {number}: bare CR")
        if len(line) > MAX_OCTETS:
            problems.append(f"line {number}: {len(line)} octets, more than {MAX_OCTETS}")
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"line {number}: not UTF-8 on its own (a fold splits a character): {e}")
        if line == b"":
            problems.append(f"line {number}: empty content line")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.append(f"the file is not UTF-8: {e}")


def content_lines(text):
    """Unfolded content lines as (name, {PARAM: value}, value)."""
    unfolded = text.replace("\r\n ", "").replace("\r\n\t", "")
    out = []
    for line in unfolded.split("\r\n"):
        if not line:
            continue
        # The name and parameters end at the first colon outside double quotes.
        quoted = False
        for i, c in enumerate(line):
            if c == '"':
                quoted = not quoted
            elif c == ":" and not quoted:
                head, value = line[:i], line[i + 1 :]
                break
        else:
            head, value = line, ""
        name, *params = head.split(";")
        parsed = {}
        for p in params:
            key, _, val = p.partition("=")
            parsed[key.upper()] = val.strip('"')
        out.append((name.upper(), parsed, value))
    return out


def check_vobject(text, problems):
    """Reads the feed with vobject (validating); returns ({uid: (start_utc, end_utc)}, calname)."""
    try:
        components = list(vobject.readComponents(text, validate=True))
    except Exception as e:  # vobject raises many types; each is a finding here
        problems.append(f"vobject refuses the feed: {type(e).__name__}: {e}")
        return {}, None
    if len(components) != 1 or components[0].name != "VCALENDAR":
        problems.append(f"vobject: expected one VCALENDAR, found {[c.name for c in components]}")
        return {}, None
    cal = components[0]
    instants = vobject_instants(cal, problems, "vobject")
    # icalendar keeps unknown X- properties raw (escaped); vobject reads X-WR-CALNAME as TEXT.
    calname = cal.x_wr_calname.value if hasattr(cal, "x_wr_calname") else None
    try:
        again = vobject.readOne(cal.serialize(), validate=True)
    except Exception as e:
        problems.append(f"vobject cannot read back its own serialization: {type(e).__name__}: {e}")
        return instants, calname
    if vobject_instants(again, problems, "vobject round trip") != instants:
        problems.append("vobject: the serialized feed reads back with other events or instants")
    return instants, calname


def vobject_instants(cal, problems, who):
    out = {}
    for ev in cal.contents.get("vevent", []):
        try:
            uid = ev.uid.value
            start, end = ev.dtstart.value, ev.dtend.value
        except AttributeError as e:
            problems.append(f"{who}: VEVENT without {e}")
            continue
        if not isinstance(start, datetime.datetime) or start.tzinfo is None:
            problems.append(f"{who}: {uid}: DTSTART {start!r} is not a zoned date-time")
            continue
        if not isinstance(end, datetime.datetime) or end.tzinfo is None:
            problems.append(f"{who}: {uid}: DTEND {end!r} is not a zoned date-time")
            continue
        out[uid] = (utc_text(start), utc_text(end))
    return out


def check_icalendar(data, text, problems, vobject_instants_by_uid):
    try:
        cal = icalendar.Calendar.from_ical(data)
    except Exception as e:
        problems.append(f"icalendar refuses the feed: {type(e).__name__}: {e}")
        return None
    for component in cal.walk():
        for prop, error in component.errors:
            problems.append(f"icalendar: {component.name} {prop or ''}: {error}")
    if not str(cal.get("PRODID", "")):
        problems.append("VCALENDAR without PRODID")
    if str(cal.get("VERSION", "")) != "2.0":
        problems.append(f"VERSION is {cal.get('VERSION')!r}, not 2.0")

    # VTIMEZONEs: by TZID, each with the earliest onset of its observances.
    vtimezones = {}
    for vtz in cal.walk("VTIMEZONE"):
        tzid = str(vtz.get("TZID", ""))
        if not tzid:
            problems.append("VTIMEZONE without TZID")
            continue
        if tzid in vtimezones:
            problems.append(f"two VTIMEZONEs with TZID {tzid}")
        observances = [c for c in vtz.subcomponents if c.name in ("STANDARD", "DAYLIGHT")]
        if not observances:
            problems.append(f"VTIMEZONE {tzid} has no STANDARD or DAYLIGHT observance")
            continue
        onsets = []
        for o in observances:
            missing = [p for p in ("DTSTART", "TZOFFSETFROM", "TZOFFSETTO") if p not in o]
            if missing:
                problems.append(f"VTIMEZONE {tzid}: {o.name} without {', '.join(missing)}")
            else:
                onsets.append(o.decoded("DTSTART"))
        try:
            own = vtz.to_tz(lookup_tzid=False)
        except Exception as e:
            problems.append(f"icalendar cannot build a time zone from VTIMEZONE {tzid}: {e}")
            own = None
        vtimezones[tzid] = (min(onsets) if onsets else None, own)

    # Every TZID= parameter, on any property, names one of them and is covered by it.
    for name, params, value in content_lines(text):
        tzid = params.get("TZID")
        if tzid is None:
            continue
        if tzid not in vtimezones:
            problems.append(f"{name};TZID={tzid}:{value}: no VTIMEZONE with that TZID")
            continue
        first_onset = vtimezones[tzid][0]
        try:
            local = datetime.datetime.strptime(value, "%Y%m%dT%H%M%S")
        except ValueError:
            continue  # not a local date-time; the parsers judge the value itself
        if first_onset is not None and local < first_onset:
            problems.append(
                f"{name};TZID={tzid}:{value} is before the VTIMEZONE's first observance "
                f"({first_onset:%Y%m%dT%H%M%S})"
            )

    events = []
    uids = set()
    for ev in cal.walk("VEVENT"):
        missing = [p for p in ("UID", "DTSTAMP", "DTSTART", "DTEND") if p not in ev]
        uid = str(ev.get("UID", "?"))
        if missing:
            problems.append(f"VEVENT {uid}: no {', '.join(missing)}")
            continue
        if uid in uids:
            problems.append(f"two VEVENTs with UID {uid}")
        uids.add(uid)
        for prop in ("DTSTAMP", "LAST-MODIFIED"):
            if prop in ev:
                v = ev.decoded(prop)
                if not isinstance(v, datetime.datetime) or v.utcoffset() != datetime.timedelta(0):
                    problems.append(f"VEVENT {uid}: {prop} {v!r} is not a UTC date-time")
        start, end = ev.decoded("DTSTART"), ev.decoded("DTEND")
        zoned = True
        for prop, v in (("DTSTART", start), ("DTEND", end)):
            if not isinstance(v, datetime.datetime) or v.tzinfo is None:
                problems.append(f"VEVENT {uid}: {prop} {v!r} is not a zoned date-time")
                zoned = False
        if not zoned:
            continue
        if end <= start:
            problems.append(
                f"VEVENT {uid}: DTEND {utc_text(end)} is not after DTSTART {utc_text(start)}"
            )
        status = str(ev.get("STATUS", ""))
        if status not in STATUSES:
            problems.append(f"VEVENT {uid}: STATUS {status!r} is not one of {sorted(STATUSES)}")

        # The same instants read from the feed's own VTIMEZONE, by icalendar and by vobject.
        for prop, v in (("DTSTART", start), ("DTEND", end)):
            tzid = ev[prop].params.get("TZID")
            readings = {"zoneinfo": utc_text(v)}
            if tzid is not None and tzid in vtimezones and vtimezones[tzid][1] is not None:
                own = tzp.localize(v.replace(tzinfo=None), vtimezones[tzid][1])
                readings["icalendar from the VTIMEZONE"] = utc_text(own)
            if uid in vobject_instants_by_uid:
                readings["vobject from the VTIMEZONE"] = vobject_instants_by_uid[uid][
                    0 if prop == "DTSTART" else 1
                ]
            if len(set(readings.values())) != 1:
                written = ev[prop].to_ical().decode()
                problems.append(f"VEVENT {uid}: {prop} {written} (TZID {tzid}) reads as {readings}")

        events.append(
            {
                "uid": uid,
                "start_utc": utc_text(start),
                "end_utc": utc_text(end),
                "status": status,
                "summary": str(ev.get("SUMMARY", "")),
                "sequence": int(ev.get("SEQUENCE", 0)),
            }
        )
    only_vobject = sorted(set(vobject_instants_by_uid) - uids)
    if only_vobject:
        problems.append(f"vobject reads events icalendar does not: {only_vobject}")
    return {"events": events, "tzids": sorted(vtimezones)}


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], "rb") as f:
        data = f.read()
    problems = []
    check_octets(data, problems)
    text = data.decode("utf-8", errors="replace")
    by_uid, calname = check_vobject(text, problems)
    summary = check_icalendar(data, text, problems, by_uid)
    if summary is not None:
        summary["calname"] = calname
    if problems or summary is None:
        for p in problems:
            print(p, file=sys.stderr)
        return 1
    json.dump(summary, sys.stdout, ensure_ascii=False)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
