#!/usr/bin/env python3
"""Validates an SBOM document with the reference libraries: CycloneDX JSON against the
1.6 schema (cyclonedx-python-lib, strict), SPDX 2.3 JSON with spdx-tools (parse and full
validation). Usage: validate-sbom.py cyclonedx|spdx FILE. Exit 0 valid, 1 invalid.

Run with the interpreter scripts/install-test-tools.sh sets up (berth-sbom-python)."""

import sys


def cyclonedx(path: str) -> list[str]:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    with open(path, encoding="utf-8") as f:
        error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(f.read())
    return [] if error is None else [str(error)]


def spdx(path: str) -> list[str]:
    from spdx_tools.spdx.parser.error import SPDXParsingError
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    try:
        doc = parse_file(path)
    except SPDXParsingError as e:
        return [str(m) for m in e.get_messages()]
    return [m.validation_message for m in validate_full_spdx_document(doc)]


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("cyclonedx", "spdx"):
        print(__doc__, file=sys.stderr)
        return 2
    problems = (cyclonedx if sys.argv[1] == "cyclonedx" else spdx)(sys.argv[2])
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
