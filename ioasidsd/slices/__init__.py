"""Slices as systemd defines them: unit files, drop-ins, names and the ``IOASIDsMax=`` limit.

``syntax`` parses one file, ``units`` finds and loads a unit along a search path, ``names``
checks names and maps a slice to its cgroup path, ``limits`` parses the ``IOASIDsMax=``
property and the daemon's default. ``manager`` realises slices in the hierarchy, through
``System`` only, and answers the slice verbs.
"""

from ioasidsd.slices.limits import (
    INFINITY,
    PROPERTY_KEYS,
    PROPERTY_SECTION,
    ConfiguredLimit,
    InvalidIOASIDsMax,
    IOASIDsMax,
    configured_ioasids_max,
    parse_default_ioasids_max,
    parse_ioasids_max,
)
from ioasidsd.slices.manager import (
    DEFAULT_SCOPE_SLICE,
    DROPIN_NAME,
    LIMIT_FILE_MODE,
    SliceManager,
    SliceState,
)
from ioasidsd.slices.names import (
    ROOT_SLICE,
    UNIT_NAME_MAX,
    UNIT_TYPES,
    InvalidUnitName,
    check_slice_name,
    check_unit_name,
    escape_cgroup_component,
    slice_ancestors,
    slice_parent,
    slice_to_cgroup_path,
)
from ioasidsd.slices.syntax import (
    Assignment,
    Diagnostic,
    ParsedFile,
    UnitReadError,
    parse_unit_text,
    read_unit_file,
    split_words,
)
from ioasidsd.slices.units import (
    DEFAULT_SEARCH_PATH,
    SearchPath,
    Unit,
    dropin_dir_names,
    load_unit,
)

__all__ = [
    "DEFAULT_SCOPE_SLICE",
    "DEFAULT_SEARCH_PATH",
    "DROPIN_NAME",
    "INFINITY",
    "LIMIT_FILE_MODE",
    "PROPERTY_KEYS",
    "PROPERTY_SECTION",
    "ROOT_SLICE",
    "UNIT_NAME_MAX",
    "UNIT_TYPES",
    "Assignment",
    "ConfiguredLimit",
    "Diagnostic",
    "IOASIDsMax",
    "InvalidIOASIDsMax",
    "InvalidUnitName",
    "ParsedFile",
    "SearchPath",
    "SliceManager",
    "SliceState",
    "Unit",
    "UnitReadError",
    "check_slice_name",
    "check_unit_name",
    "configured_ioasids_max",
    "dropin_dir_names",
    "escape_cgroup_component",
    "load_unit",
    "parse_default_ioasids_max",
    "parse_ioasids_max",
    "parse_unit_text",
    "read_unit_file",
    "slice_ancestors",
    "slice_parent",
    "slice_to_cgroup_path",
    "split_words",
]
