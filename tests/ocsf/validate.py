#!/usr/bin/env python3
"""Validate audit records against the official OCSF schema of the version each one claims.

Every line of every file given is one record. Its `metadata.version` names the OCSF version,
its `class_uid` the class and `metadata.profiles` the profiles it applies; the record is
checked against the JSON Schema that the `ocsf-json-schema` package generates from that
version's schema export (the export the OCSF project publishes at schema.ocsf.io, shipped
inside the package), with objects embedded, so nothing is fetched. A version or a class the
schema does not know is an error, as a SIEM pipeline would treat it.

Prints one line per (version, class) with the records checked and failed, the first errors
of each failing class, and exits 1 if any record failed, 2 if the input could not be read.

usage: validate.py [--require-version V] FILE.jsonl...
"""

import argparse
import json
import sys
from collections import defaultdict

try:
    import jsonschema
    from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema, get_packaged_versions
except ImportError as e:  # the test command installs both
    print(f"validate.py: {e}: install ocsf-json-schema and jsonschema", file=sys.stderr)
    sys.exit(2)

MAX_ERRORS_SHOWN = 5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--require-version", help="fail any record that claims another version")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()

    schemas = {}  # version -> OcsfJsonSchemaEmbedded
    validators = {}  # (version, class_uid, profiles) -> validator
    checked = defaultdict(int)
    failed = defaultdict(int)
    errors = defaultdict(list)
    total = 0
    for path in args.files:
        try:
            lines = open(path, encoding="utf-8").read().splitlines()
        except OSError as e:
            print(f"validate.py: {path}: {e}", file=sys.stderr)
            return 2
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            total += 1
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                key = ("?", "not JSON")
                checked[key] += 1
                failed[key] += 1
                errors[key].append(f"{where}: {e}")
                continue
            version = str(rec.get("metadata", {}).get("version", "?"))
            uid = rec.get("class_uid")
            profiles = tuple(sorted(rec.get("metadata", {}).get("profiles", []) or []))
            problems = []
            if args.require_version and version != args.require_version:
                problems.append(f"claims OCSF {version}, expected {args.require_version}")
            if version not in get_packaged_versions():
                problems.append(f"OCSF version {version!r} is not a published version")
                name = f"class {uid}"
            else:
                if version not in schemas:
                    schemas[version] = OcsfJsonSchemaEmbedded(get_ocsf_schema(version))
                schema = schemas[version]
                try:
                    name = schema.lookup_class_name_from_uid(uid)
                except Exception:  # the package raises a bare exception for an unknown uid
                    name = None
                if not name:
                    problems.append(f"class_uid {uid} does not exist in OCSF {version}")
                    name = f"class {uid}"
                else:
                    vkey = (version, uid, profiles)
                    if vkey not in validators:
                        js = schema.get_class_schema(name, list(profiles))
                        cls = jsonschema.validators.validator_for(js)
                        validators[vkey] = cls(js)
                    for err in validators[vkey].iter_errors(rec):
                        at = "/".join(str(p) for p in err.absolute_path) or "(record)"
                        problems.append(f"{at}: {err.message[:300]}")
            key = (version, f"{uid} {name}")
            checked[key] += 1
            if problems:
                failed[key] += 1
                errors[key].extend(f"{where}: {p}" for p in problems)

    bad = 0
    for key in sorted(checked, key=str):
        version, cls = key
        ok = checked[key] - failed[key]
        mark = "ok  " if not failed[key] else "FAIL"
        print(f"{mark} OCSF {version} {cls}: {ok}/{checked[key]} valid")
        for e in errors[key][:MAX_ERRORS_SHOWN]:
            print(f"       {e}")
        if len(errors[key]) > MAX_ERRORS_SHOWN:
            print(f"       ... and {len(errors[key]) - MAX_ERRORS_SHOWN} more")
        bad += failed[key]
    print(f"{total - bad} of {total} records valid OCSF" + ("" if not bad else f"; {bad} invalid"))
    return 1 if bad or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
