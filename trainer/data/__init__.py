"""Dataset formats: ImageFolder, COCO JSON, YOLO txt and Pascal VOC XML, read as trainer.dataset.Example."""

from .coco import read_coco, write_coco
from .common import FormatError, ReadReport
from .imagefolder import read_imagefolder, write_imagefolder
from .voc import read_voc, write_voc
from .yolo import read_yolo, write_yolo

__all__ = ["FormatError", "ReadReport", "read_coco", "read_imagefolder", "read_voc", "read_yolo", "write_coco",
           "write_imagefolder", "write_voc", "write_yolo"]
