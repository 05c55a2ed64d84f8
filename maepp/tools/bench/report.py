"""What every benchmark prints: readable lines (unless --json), then one JSON line."""

import json

from absl import flags

_JSON = flags.DEFINE_bool("json", False, "Print only the JSON line.")


def report(result: dict, *lines: str) -> None:
    if not _JSON.value:
        for line in lines:
            print(line)
    print(json.dumps(result))
