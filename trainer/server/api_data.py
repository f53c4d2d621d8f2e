"""Dataset import and export over the API (the CLI ``edgeloop dataset`` does the same offline)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from trainer.data.common import IMAGE_EXTS, FormatError, ReadReport
from trainer.data.store_io import (OUTSIDE_REASON, TASK_OF, export_store, import_examples, links_outside,
                                   read_dataset)
from trainer.store import StoreError

from .api import ERRORS, StoreDep, User
from .schemas import ErrorOut

router = APIRouter(prefix="/api", responses=ERRORS)
Format = Literal["imagefolder", "coco", "yolo", "voc"]


class ImportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Format
    path: str = Field(min_length=1, max_length=1024, description="relative to the server's import_root")
    images: str | None = Field(None, max_length=1024, description="coco: images folder, relative to import_root")


class ImportOut(BaseModel):
    read: int
    added: int
    outside_root: int = Field(description="images refused because they resolve outside import_root (symlinks)")
    skipped: list[list[str]]
    boxes_read: int = Field(0, description="detection: boxes kept")
    boxes_dropped: dict[str, int] = Field(default_factory=dict,
                                          description="detection: boxes left out, by reason (zero-area, ...)")
    boxes_clipped: int = Field(0, description="detection: boxes kept, clipped to their image")
    box_notes: list[list[str]] = Field(default_factory=list, description="[where, reason] of the first dropped boxes")


def _under(root: Path, relative: str) -> Path:
    """``relative`` resolved inside ``root``; anything escaping it (.., symlinks, absolute) is refused."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in relative):
        raise HTTPException(422, "the path contains control characters")
    try:
        target = (root / relative).resolve()
        if not target.is_relative_to(root.resolve()):
            raise HTTPException(403, "path is outside the import root")
        exists = target.exists()
    except (OSError, ValueError) as e:  # a name over the file system's limit, a NUL byte
        raise HTTPException(422, f"unusable path: {type(e).__name__}") from e
    except RuntimeError as e:  # Python < 3.13: resolve() through a symlink loop
        raise HTTPException(422, "unusable path: a symlink loop") from e
    if not exists:
        raise HTTPException(404, "no such path under the import root")
    return target


@router.post("/import", response_model=ImportOut, summary="import a dataset found under the server's import_root",
             responses={403: {"model": ErrorOut}, 404: {"model": ErrorOut, "description": "import disabled or no path"},
                        422: {"model": ErrorOut, "description": "unreadable dataset"}})
def post_import(body: ImportIn, user: User, store: StoreDep, request: Request) -> ImportOut:
    root = request.app.state.service.config.import_root
    if root is None:
        raise HTTPException(404, "import over the API is disabled (set import_root in the server config)")
    path = _under(root, body.path)
    images = _under(root, body.images) if body.images else None
    report = ReadReport()
    try:
        _refuse_outside_annotations(body.format, path, root)
        examples = read_dataset(body.format, path, images, report)
        added = import_examples(store, examples, fmt=body.format, task=TASK_OF[body.format], report=report,
                                root=root)
    except (FormatError, StoreError) as e:
        raise HTTPException(422, str(e)) from e
    outside = sum(1 for _p, why in report.skipped if why.startswith(OUTSIDE_REASON))
    return ImportOut(read=report.read, added=added, outside_root=outside,
                     skipped=[list(s) for s in report.skipped[:1000]], boxes_read=report.boxes_read,
                     boxes_dropped=report.boxes_dropped, boxes_clipped=report.boxes_clipped,
                     box_notes=[list(n) for n in report.box_notes])


def _refuse_outside_annotations(fmt: str, path: Path, root: Path) -> None:
    """A non-image file or any folder linked from outside the root refuses the whole import.

    Such a link could carry annotations the readers would use. Images are checked one by one when
    imported; ImageFolder has no annotation files (its folder names are the labels), so only its
    images are checked.
    """
    if fmt == "imagefolder" or not path.is_dir():
        return
    bad = [p for p in links_outside(path, root) if p.is_dir() or p.suffix.lower() not in IMAGE_EXTS]
    if bad:
        raise FormatError(f"{len(bad)} annotation file(s) or folder(s) resolve outside the import root, e.g. "
                          f"{bad[0].relative_to(path).as_posix()!r:.200}")


@router.get("/export", response_class=FileResponse, summary="the labelled dataset as a zip",
            responses={200: {"content": {"application/zip": {}}},
                       422: {"model": ErrorOut, "description": "format does not fit the task"}})
def get_export(user: User, store: StoreDep, background: BackgroundTasks, format: Annotated[Format, Query()],
               split: Annotated[Literal["train", "val", "test"] | None, Query()] = None) -> FileResponse:
    work = Path(tempfile.mkdtemp(prefix="edgeloop-export-"))
    background.add_task(shutil.rmtree, work, True)
    try:
        export_store(store, format, work / "dataset", split)
    except (FormatError, StoreError) as e:
        shutil.rmtree(work, True)
        raise HTTPException(422, str(e)) from e
    archive = shutil.make_archive(str(work / "dataset"), "zip", work / "dataset")
    return FileResponse(archive, media_type="application/zip", filename=f"edgeloop-{format}.zip")
