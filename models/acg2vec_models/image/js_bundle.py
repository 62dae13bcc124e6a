"""The value a JavaScript module bundle exports, read without running JavaScript (no Node.js).

nsfwjs ships each TF.js model as browserify/UMD bundles whose one module is `<m>.exports = <literal>`: the model
(`{modelTopology, weightsManifest}`) or one base64 weight shard (a string). The literal is minified JavaScript:
unquoted keys, `!0` / `!1` for true / false, numbers such as `.5`, `-0` or `1e-3`, strings in either quote. This
module finds the assignment and parses that literal (objects, arrays, strings, numbers, true / false / null /
undefined, `!0` / `!1`) into Python values; any other expression is refused with its position, so a bundle that
computes its value is never silently misread.
"""

from __future__ import annotations

import math
import re
from typing import Any

_EXPORTS = re.compile(r"(?<![\w$.])(?:module\.|[A-Za-z_$][\w$]*\.)?exports\s*=\s*(?=[\[{\"'])")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_IDENTIFIER = re.compile(r"[A-Za-z_$][\w$]*")
_WORDS = {"true": True, "false": False, "null": None, "undefined": None, "NaN": math.nan, "Infinity": math.inf}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


class BundleError(ValueError):
    """The bundle's exported value is not a literal this reader understands."""


class _Parser:
    def __init__(self, text: str, pos: int):
        self.text, self.pos = text, pos

    def fail(self, what: str) -> BundleError:
        excerpt = self.text[max(0, self.pos - 30) : self.pos + 30]
        return BundleError(f"{what} at character {self.pos} (…{excerpt}…)")

    def space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def peek(self) -> str:
        self.space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.fail(f"expected {char!r}")
        self.pos += 1

    def value(self) -> Any:
        c = self.peek()
        if c == "{":
            return self.object()
        if c == "[":
            return self.array()
        if c in "\"'":
            return self.string()
        if c == "!" and self.text[self.pos + 1 : self.pos + 2] in ("0", "1"):  # minified true / false
            self.pos += 2
            return self.text[self.pos - 1] == "0"
        if c == "v" and self.text.startswith("void 0", self.pos):
            self.pos += len("void 0")
            return None
        number = _NUMBER.match(self.text, self.pos)
        if number:
            self.pos = number.end()
            literal = number.group(0)
            return float(literal) if any(ch in literal for ch in ".eE") else int(literal)
        word = _IDENTIFIER.match(self.text, self.pos)
        if word and word.group(0) in _WORDS:
            self.pos = word.end()
            return _WORDS[word.group(0)]
        raise self.fail("not a literal")

    def key(self) -> str:
        c = self.peek()
        if c in "\"'":
            return self.string()
        match = _IDENTIFIER.match(self.text, self.pos) or _NUMBER.match(self.text, self.pos)
        if not match:
            raise self.fail("expected a property name")
        self.pos = match.end()
        return match.group(0)

    def object(self) -> dict[str, Any]:
        self.expect("{")
        out: dict[str, Any] = {}
        while self.peek() != "}":
            name = self.key()
            self.expect(":")
            out[name] = self.value()
            if self.peek() != ",":
                break
            self.pos += 1
        self.expect("}")
        return out

    def array(self) -> list[Any]:
        self.expect("[")
        out: list[Any] = []
        while self.peek() != "]":
            out.append(self.value())
            if self.peek() != ",":
                break
            self.pos += 1
        self.expect("]")
        return out

    def string(self) -> str:
        quote = self.text[self.pos]
        start = self.pos = self.pos + 1
        end = self.text.find(quote, start)
        if end >= 0 and "\\" not in self.text[start:end] and "\n" not in self.text[start:end]:
            self.pos = end + 1  # the common case (e.g. a base64 shard): no escapes
            return self.text[start:end]
        out: list[str] = []
        while True:
            if self.pos >= len(self.text) or self.text[self.pos] == "\n":
                raise self.fail("unterminated string")
            c = self.text[self.pos]
            if c == quote:
                self.pos += 1
                return "".join(out)
            if c != "\\":
                out.append(c)
                self.pos += 1
                continue
            e = self.text[self.pos + 1 : self.pos + 2]
            self.pos += 2
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
            elif e == "x":
                out.append(chr(int(self.text[self.pos : self.pos + 2], 16)))
                self.pos += 2
            elif e == "u" and self.text[self.pos : self.pos + 1] == "{":
                close = self.text.index("}", self.pos)
                out.append(chr(int(self.text[self.pos + 1 : close], 16)))
                self.pos = close + 1
            elif e == "u":
                unit = int(self.text[self.pos : self.pos + 4], 16)
                self.pos += 4
                if 0xD800 <= unit < 0xDC00 and self.text.startswith("\\u", self.pos):  # a surrogate pair
                    low = int(self.text[self.pos + 2 : self.pos + 6], 16)
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    self.pos += 6
                out.append(chr(unit))
            elif e == "\n":
                continue  # a line continuation
            else:
                out.append(e)  # \" \' \\ \/ and any other character stand for themselves


def exported_value(source: str) -> Any:
    """The literal a bundle assigns to `module.exports` (or a browserify module's `<m>.exports`)."""
    for match in _EXPORTS.finditer(source):
        parser = _Parser(source, match.end())
        value = parser.value()
        if parser.peek() not in (";", "}", ",", ")", ""):
            raise parser.fail("the exported value is an expression, not a literal")
        return value
    raise BundleError("no `exports = <literal>` assignment in the bundle")
