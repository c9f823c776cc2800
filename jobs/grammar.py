"""One grammar for every command: `deepfusion COMMAND [WHAT ...] [key=value ...]`.

- What a command acts on (a dataset root, a run, a corpus folder) is positional;
- every setting is `key=value` (nested keys with dots, lists as `key=[a,b]`, values parsed as
  YAML), checked against the command's settings dataclass before anything runs;
- `--key value` and `--key=value` are accepted as the same thing as `key=value` (one value; a
  `--key` alone, or before another setting, means `key=true`);
- the only real flags are the few every command shares: --config, --help, --json, --summary-json,
  -v/--verbose.
Each command's `--help` lists its keys, generated from its settings dataclass.
"""

from __future__ import annotations

from common.config import apply_overrides, from_dict, keys_help, read_yaml

VALUE_FLAGS = {"--config", "--summary-json"}
BOOL_FLAGS = {"-h", "--help", "--json", "-v", "--verbose"}


def normalize(argv: list[str]) -> list[str]:
    """`--key value` / `--key=value` -> `key=value`; a command's shared flags (--config,
    --summary-json, --json) moved after its other arguments, so positionals and settings may
    come in any order around them."""
    out: list[str] = []
    moved: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if token == "--":
            out += moved + argv[i:]
            moved = []
            break
        if name in VALUE_FLAGS or name == "--json":
            moved.append(token)
            if name in VALUE_FLAGS and "=" not in token and i + 1 < len(argv):
                moved.append(argv[i + 1])
                i += 1
        elif name in BOOL_FLAGS or not token.startswith("--") or len(token) == 2:
            out.append(token)
        elif "=" in token:
            key, value = token[2:].split("=", 1)
            out.append(f"{key.replace('-', '_')}={value}")
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--") and "=" not in argv[i + 1]:
            out.append(f"{token[2:].replace('-', '_')}={argv[i + 1]}")
            i += 1
        else:
            out.append(f"{token[2:].replace('-', '_')}=true")
        i += 1
    return out + moved


def split(args: list[str]) -> tuple[list[str], list[str]]:
    """(positionals, key=value settings), in their order."""
    return [a for a in args if "=" not in a], [a for a in args if "=" in a]


def settings(cls, overrides: list[str], config: str | None = None):
    """`cls` from an optional YAML file and key=value settings; errors name the key."""
    return from_dict(cls, apply_overrides(read_yaml(config), overrides))


def epilog(examples: str, cls=None, title: str = "keys", skip: tuple[str, ...] = ()) -> str:
    text = examples.rstrip() + "\n"
    if cls is not None:
        text += f"\n{title} (key=value; nested keys with dots):\n{keys_help(cls, skip=skip)}\n"
    return text
