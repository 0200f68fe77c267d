"""Applies the JSONPatches Berth's admission webhook returned, with an independent RFC 6902
implementation (PyPI jsonpatch), and validates every result against the Kubernetes
schemas (kubernetes-validate, strict: an unknown or misspelt field fails).

stdin: a JSON list of {"object": ..., "patch": [...] or null}; stdout: a JSON list of
{"result": <patched object>} or {"error": "..."} in the same order."""

import json
import sys

import jsonpatch
import kubernetes_validate

VERSION = "1.37.0"


def main():
    out = []
    for case in json.load(sys.stdin):
        try:
            obj = case["object"]
            if case.get("patch") is not None:
                obj = jsonpatch.JsonPatch(case["patch"]).apply(obj, in_place=False)
            kubernetes_validate.validate(obj, VERSION, strict=True)
            out.append({"result": obj})
        except Exception as e:  # each case reports its own failure
            out.append({"error": f"{type(e).__name__}: {e}"})
    json.dump(out, sys.stdout)


main()
