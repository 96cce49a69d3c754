"""Where the original files of a dataset are: ``source_dir=``, else ``$FNN_DATASETS_DIR/<name>``, else nowhere."""

import os
from pathlib import Path

from fnn._errors import DatasetError
from fnn.data._specs import FILES

#: The environment variable naming a folder with one sub-folder of IDX files per dataset.
ENV_VAR = "FNN_DATASETS_DIR"


def source_files(spec, source_dir):
    """Returns ``{base name: path}`` of the source IDX files, or None to go online."""
    folder = source_folder(spec.name, source_dir)
    if folder is None:
        return None
    return {base: _find_file(spec, folder, base) for pair in FILES.values() for base in pair}


def source_folder(name, source_dir):
    """Returns ``source_dir``, else ``$FNN_DATASETS_DIR/<name>`` if it exists, else None."""
    if source_dir is not None:
        folder = Path(source_dir).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"source_dir {str(folder)!r} is not a folder")
        return folder
    root = os.environ.get(ENV_VAR)
    if root and (Path(root).expanduser() / name).is_dir():
        return Path(root).expanduser() / name
    return None


def _find_file(spec, folder, base):
    """Returns ``folder/base.gz`` or ``folder/base``; raises if neither exists."""
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    wanted = ", ".join(b for pair in FILES.values() for b in pair)
    hint = ""
    if (folder / spec.name).is_dir():
        hint = f" (did you mean source_dir={str(folder / spec.name)!r}?)"
    raise DatasetError(
        f"missing file {base}.gz (or raw {base}) in {folder}; the source folder "
        f"for {spec.name!r} must hold the four IDX files {wanted}, each .gz or raw" + hint
    )
