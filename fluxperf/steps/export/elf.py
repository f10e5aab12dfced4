"""Read a shared library's dynamic linking facts from its ELF headers, without loading it.

Loading a native library is the one thing we must not do to find out whether loading it is safe (an AOTInductor
`wrapper.so` that carries its own libstdc++ can segfault the process; see fluxperf.steps.export.loader). So this reads the
file: the DT_NEEDED entries of the dynamic section and the defined symbols of the dynamic symbol table. It needs
only the section headers and those few sections, read by offset from any seekable binary file (a `.so` inside a
`.pt2` zip is stored uncompressed, so reading it from the archive is cheap even for a multi-GB package).

Why not binutils: `readelf`/`nm` are often missing where Python runs; the tests cross-check this reader against
them where they exist.

Example:
    >>> import sys
    >>> info = read_elf_info(sys.executable)   # doctest: +SKIP
    >>> info.needed                            # doctest: +SKIP
    ('libc.so.6',)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from fluxperf.errors import FluxperfError

_SHT_DYNSYM, _SHT_DYNAMIC = 11, 6
_DT_NULL, _DT_NEEDED = 0, 1
_STB_GLOBAL, _STB_WEAK, _STB_GNU_UNIQUE = 1, 2, 10
_MAX_TABLE_BYTES = 256 << 20  # a sanity bound: dynamic tables of real libraries are a few MB


class ElfError(FluxperfError, ValueError):
    """The file is not an ELF shared object this reader understands (value, rule and what to do are named)."""


@dataclass(frozen=True)
class ElfInfo:
    """Dynamic linking facts of one ELF file.

    needed: DT_NEEDED library names, in order (e.g. ("libtorch_cpu.so", "libstdc++.so.6", "libc.so.6")).
    strong: names of defined dynamic symbols with GLOBAL binding (the library's own, non-template code).
    weak: names of defined dynamic symbols with WEAK or GNU_UNIQUE binding (inline/template instantiations
        that every C++ object file emits; they say nothing about where the C++ runtime lives).
    """

    needed: tuple[str, ...]
    strong: frozenset[str]
    weak: frozenset[str]


def read_elf_info(source: str | BinaryIO) -> ElfInfo:
    """Parse DT_NEEDED and the defined dynamic symbols of an ELF file (a path or a seekable binary file object).

    Raises:
        ElfError: not an ELF file, an unknown class/byte order, no section headers, or truncated tables.
    """
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        with open(source, "rb") as f:
            return _parse(f, str(source))
    return _parse(source, getattr(source, "name", "<file>"))


def _parse(f: BinaryIO, name: str) -> ElfInfo:
    ident = _read(f, 0, 16, name)
    if ident[:4] != b"\x7fELF":
        raise ElfError(f"{name} is not an ELF file (magic {ident[:4]!r}); only Linux shared libraries can be read.")
    if ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise ElfError(f"{name}: unknown ELF class {ident[4]} / byte order {ident[5]} (expected 1 or 2 each).")
    is64, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
    header = _read(f, 0, 64 if is64 else 52, name)
    if is64:
        shoff, = struct.unpack_from(order + "Q", header, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", header, 0x3A)
    else:
        shoff, = struct.unpack_from(order + "I", header, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", header, 0x2E)
    if shoff == 0 or shnum == 0:
        raise ElfError(f"{name} has no section headers (stripped with --strip-sections?); cannot list its "
                       "dependencies without loading it.")
    sections = [_section(_read(f, shoff + i * shentsize, shentsize, name), is64, order) for i in range(shnum)]
    needed: list[str] = []
    strong: set[str] = set()
    weak: set[str] = set()
    for sh_type, offset, size, link, entsize in sections:
        if sh_type not in (_SHT_DYNAMIC, _SHT_DYNSYM) or size == 0:
            continue
        if link >= len(sections):
            raise ElfError(f"{name}: section links to string table {link} of {len(sections)}; the file is corrupt.")
        _, str_off, str_size, _, _ = sections[link]
        strings = _read(f, str_off, str_size, name)
        table = _read(f, offset, size, name)
        if sh_type == _SHT_DYNAMIC:
            needed += _needed(table, strings, is64, order, entsize)
        else:
            _symbols(table, strings, is64, order, entsize, strong, weak)
    return ElfInfo(tuple(needed), frozenset(strong), frozenset(weak))


def _section(raw: bytes, is64: bool, order: str) -> tuple[int, int, int, int, int]:
    """(sh_type, sh_offset, sh_size, sh_link, sh_entsize) of one section header."""
    if is64:
        _, sh_type, _, _, offset, size, link, _, _, entsize = struct.unpack_from(order + "IIQQQQIIQQ", raw)
    else:
        _, sh_type, _, _, offset, size, link, _, _, entsize = struct.unpack_from(order + "IIIIIIIIII", raw)
    return sh_type, offset, size, link, entsize


def _needed(table: bytes, strings: bytes, is64: bool, order: str, entsize: int) -> list[str]:
    fmt = order + ("qQ" if is64 else "iI")
    step = entsize or struct.calcsize(fmt)
    out = []
    for pos in range(0, len(table) - step + 1, step):
        tag, value = struct.unpack_from(fmt, table, pos)
        if tag == _DT_NULL:
            break
        if tag == _DT_NEEDED:
            out.append(_cstr(strings, value))
    return out


def _symbols(table: bytes, strings: bytes, is64: bool, order: str, entsize: int, strong: set, weak: set) -> None:
    # Elf64_Sym: name(I) info(B) other(B) shndx(H) value(Q) size(Q); Elf32_Sym: name value size info other shndx
    step = entsize or (24 if is64 else 16)
    for pos in range(step, len(table) - step + 1, step):  # entry 0 is the reserved null symbol
        if is64:
            st_name, info, _, shndx = struct.unpack_from(order + "IBBH", table, pos)
        else:
            st_name, = struct.unpack_from(order + "I", table, pos)
            info, _, shndx = struct.unpack_from(order + "BBH", table, pos + 12)
        if shndx == 0 or st_name == 0:  # SHN_UNDEF: a reference to another library, not a definition
            continue
        binding = info >> 4
        if binding == _STB_GLOBAL:
            strong.add(_cstr(strings, st_name))
        elif binding in (_STB_WEAK, _STB_GNU_UNIQUE):
            weak.add(_cstr(strings, st_name))


def _cstr(strings: bytes, offset: int) -> str:
    end = strings.find(b"\0", offset)
    return strings[offset:end if end >= 0 else len(strings)].decode("utf-8", "replace")


def _read(f: BinaryIO, offset: int, size: int, name: str) -> bytes:
    if size > _MAX_TABLE_BYTES:
        raise ElfError(f"{name}: a {size}-byte table at offset {offset} exceeds {_MAX_TABLE_BYTES} bytes; corrupt file?")
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise ElfError(f"{name}: truncated (wanted {size} bytes at offset {offset}, got {len(data)}).")
    return data
