"""The assist API: the teacher's state, pre-labelling the backlog, accepting a pre-label as the label.

Every route answers 404 when the server has no ``[assist]`` section; a configured teacher that
failed to load answers 409 with the reason on the routes that need it.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from trainer.store import InvalidLabel, NotFound, StoreError

from . import schemas as s
from .api import ERRORS, NOT_FOUND, ItemId, StoreDep, User, _item

router = APIRouter(prefix="/api", responses=ERRORS)
NOT_CONFIGURED = {404: {"model": s.ErrorOut, "description": "no [assist] teacher configured"}}


class TeacherOut(BaseModel):
    name: str
    version: int
    task: str
    key: str
    sha256: str
    labels: list[str]
    mapping: dict[str, str] = Field(description="teacher label -> project label, for every label kept")
    provider: str | None = Field(None, description="the onnxruntime provider in use")
    provider_warning: str | None = Field(None, description="a requested provider that is missing")


class CountsOut(BaseModel):
    done: int
    failed: int
    waiting: int = Field(description="unlabelled items this teacher has not pre-labelled yet")


class AssistOut(BaseModel):
    enabled: bool
    state: str = Field(description="disabled | loading | ready | failed | stopped")
    error: str | None = Field(description="why the teacher is not loaded")
    auto: bool
    min_score: float
    label_map: dict[str, str]
    model: str
    queued: int
    processed: int
    mean_seconds: float | None
    teacher: TeacherOut | None
    counts: CountsOut | None


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    retry_failed: bool = Field(False, description="run again on items the teacher failed on")
    force: bool = Field(False, description="pre-label every unlabelled item again")


class RunOut(BaseModel):
    waiting: int


class UnlabelledIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=1024, description="a folder of images, relative to import_root")


class UnlabelledOut(BaseModel):
    read: int
    added: int
    skipped: list[list[str]] = Field(description="[path, reason] for every file left out (first 1000)")


def _assist(request: Request):
    assist = request.app.state.service.assist
    if assist is None:
        raise HTTPException(404, "no teacher is configured (add an [assist] section to the server config)")
    return assist


@router.get("/assist", response_model=AssistOut, responses=NOT_CONFIGURED, summary="the teacher and its progress")
def get_assist(user: User, request: Request) -> AssistOut:
    return AssistOut.model_validate(_assist(request).status())


@router.post("/assist/run", response_model=RunOut, summary="pre-label the existing unlabelled items",
             responses={**NOT_CONFIGURED, 409: {"model": s.ErrorOut, "description": "the teacher is not loaded"}})
def post_assist_run(user: User, request: Request, body: RunIn | None = None) -> RunOut:
    from trainer.assist.teacher import TeacherError

    body = body or RunIn()
    try:
        return RunOut(waiting=_assist(request).request_run(retry_failed=body.retry_failed, force=body.force))
    except TeacherError as e:
        raise HTTPException(409, str(e)) from e


@router.post("/items/{item_id}/accept-prelabel", response_model=s.LabelOut,
             summary="make the teacher's pre-label the item's label",
             responses={**NOT_FOUND, 422: {"model": s.ErrorOut, "description": "no pre-label, or one the project "
                                                                               "cannot take"}})
def post_accept_prelabel(user: User, store: StoreDep, item_id: ItemId) -> s.LabelOut:
    from trainer.assist.prelabels import accept

    try:
        accept(store, item_id, user)
    except NotFound as e:
        raise HTTPException(404, str(e)) from e
    except InvalidLabel as e:
        raise HTTPException(422, str(e)) from e
    return s.LabelOut(ok=True, item=_item(store, item_id))


@router.post("/import/unlabelled", response_model=UnlabelledOut, summary="add a folder of unlabelled images to review",
             responses={403: {"model": s.ErrorOut, "description": "path outside import_root"},
                        404: {"model": s.ErrorOut, "description": "import disabled or no such path"},
                        422: {"model": s.ErrorOut, "description": "not a folder of images"}})
def post_import_unlabelled(body: UnlabelledIn, user: User, store: StoreDep, request: Request) -> UnlabelledOut:
    from trainer.assist.unlabelled import import_unlabelled
    from trainer.data.common import FormatError, ReadReport

    from .api_data import _under

    root = request.app.state.service.config.import_root
    if root is None:
        raise HTTPException(404, "import over the API is disabled (set import_root in the server config)")
    folder = _under(root, body.path)
    if not folder.is_dir():
        raise HTTPException(422, "the path is not a folder")
    report = ReadReport()
    try:
        added = import_unlabelled(store, folder, report, root=root)
    except (FormatError, StoreError) as e:
        raise HTTPException(422, str(e)) from e
    return UnlabelledOut(read=report.read, added=added, skipped=[list(x) for x in report.skipped[:1000]])
