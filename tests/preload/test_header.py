"""``preload/include/linux/ioasid.h`` agrees with ``ioasidsd.model.ioasid_uapi``: every command
number, structure size and field offset, as the C compiler sees them."""

from __future__ import annotations

import subprocess

from ioasidsd.model import ioasid_uapi as uapi

from .conftest import compile_c

PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include <linux/ioasid.h>
#define NUM(x) printf(#x " %lu\n", (unsigned long)(x))
#define OFF(s, f) printf("offsetof " #s "." #f " %zu\n", offsetof(struct s, f))
int main(void)
{
	NUM(IOASID_API_VERSION); NUM(IOASID_TYPE); NUM(IOASID_BASE);
	NUM(IOASID_GET_API_VERSION); NUM(IOASID_GET_INFO);
	NUM(IOASID_REQUEST_ALLOC); NUM(IOASID_REQUEST_FREE);
	NUM(IOASID_REQUEST_ALLOC_BATCH); NUM(IOASID_REQUEST_FREE_BATCH);
	NUM(IOASID_BIND_GPASID); NUM(IOASID_UNBIND_GPASID);
	NUM(IOASID_BIND_GPASID_VAL); NUM(IOASID_BATCH_MAX);
	NUM(sizeof(struct ioasid_info)); NUM(sizeof(struct ioasid_alloc_request));
	NUM(sizeof(struct ioasid_alloc_batch)); NUM(sizeof(struct ioasid_free_batch));
	NUM(sizeof(struct ioasid_bind_gpasid)); NUM(sizeof(struct ioasid_unbind_gpasid));
	OFF(ioasid_info, argsz); OFF(ioasid_info, flags); OFF(ioasid_info, ioasid_bits);
	OFF(ioasid_alloc_request, argsz); OFF(ioasid_alloc_request, flags);
	OFF(ioasid_alloc_request, range.min); OFF(ioasid_alloc_request, range.max);
	OFF(ioasid_alloc_batch, min); OFF(ioasid_alloc_batch, max);
	OFF(ioasid_alloc_batch, count); OFF(ioasid_alloc_batch, ids);
	OFF(ioasid_free_batch, count); OFF(ioasid_free_batch, ids);
	OFF(ioasid_bind_gpasid, hpasid); OFF(ioasid_bind_gpasid, gpasid);
	OFF(ioasid_bind_gpasid, devid); OFF(ioasid_bind_gpasid, addr_width);
	OFF(ioasid_bind_gpasid, gpgd);
	OFF(ioasid_unbind_gpasid, hpasid); OFF(ioasid_unbind_gpasid, devid);
	return 0;
}
"""


def offsets(layout, names: tuple[str, ...]) -> dict[str, int]:
    """The offsets of a packed ``struct.Struct`` layout's fields."""
    out, pos = {}, 0
    for code, name in zip(layout.format.lstrip("="), names, strict=True):
        out[name] = pos
        pos += {"I": 4, "i": 4, "Q": 8}[code]
    return out


def test_the_header_agrees_with_the_uapi_module(tmp_path) -> None:
    source = tmp_path / "header.c"
    source.write_text(PROGRAM)
    done = subprocess.run([str(compile_c(source, tmp_path / "header"))], capture_output=True,
                          text=True, check=True)
    c = dict(line.rsplit(" ", 1) for line in done.stdout.splitlines())
    c = {name: int(value) for name, value in c.items()}
    expected = {
        "IOASID_API_VERSION": uapi.IOASID_API_VERSION,
        "IOASID_TYPE": uapi.IOASID_TYPE,
        "IOASID_BASE": uapi.IOASID_BASE,
        "IOASID_BIND_GPASID_VAL": uapi.IOASID_BIND_GPASID_VAL,
        "IOASID_BATCH_MAX": uapi.IOASID_BATCH_MAX,
        "sizeof(struct ioasid_info)": uapi.INFO.size,
        "sizeof(struct ioasid_alloc_request)": uapi.ALLOC_REQUEST.size,
        "sizeof(struct ioasid_alloc_batch)": uapi.ALLOC_BATCH.size,
        "sizeof(struct ioasid_free_batch)": uapi.FREE_BATCH.size,
        "sizeof(struct ioasid_bind_gpasid)": uapi.BIND_GPASID.size,
        "sizeof(struct ioasid_unbind_gpasid)": uapi.UNBIND_GPASID.size,
    }
    for number, name in uapi.COMMAND_NAMES.items():
        expected[f"IOASID_{name}"] = number
    layouts = {
        "ioasid_info": (uapi.INFO, ("argsz", "flags", "ioasid_bits")),
        "ioasid_alloc_request": (uapi.ALLOC_REQUEST, ("argsz", "flags", "range.min",
                                                      "range.max")),
        "ioasid_alloc_batch": (uapi.ALLOC_BATCH, ("argsz", "flags", "min", "max", "count")),
        "ioasid_free_batch": (uapi.FREE_BATCH, ("argsz", "flags", "count")),
        "ioasid_bind_gpasid": (uapi.BIND_GPASID, ("argsz", "flags", "hpasid", "gpasid",
                                                  "devid", "addr_width", "gpgd")),
        "ioasid_unbind_gpasid": (uapi.UNBIND_GPASID, ("argsz", "flags", "hpasid", "devid")),
    }
    for struct_name, (layout, names) in layouts.items():
        for field, offset in offsets(layout, names).items():
            key = f"offsetof {struct_name}.{field}"
            if key in c:
                expected[key] = offset
    # the IDs of a batch follow its fixed part
    expected["offsetof ioasid_alloc_batch.ids"] = uapi.ALLOC_BATCH.size
    expected["offsetof ioasid_free_batch.ids"] = uapi.FREE_BATCH.size
    assert {k: c[k] for k in expected} == expected
    assert len(expected) == len(c), set(c) - set(expected)
