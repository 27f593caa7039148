"""Multi-LoRA slot tables the model runner applies at every linear projection."""

from lorax_engine.lora.packed import LoraWeightsLike, PackedLora, pack_lora
from lorax_engine.lora.slot_table import LoraSlotTable
from lorax_engine.lora.slots import LoraSlots
from lorax_engine.lora.spec import PEFT_TARGETS, PROJECTIONS, ModelLoraSpec

__all__ = [
    "PEFT_TARGETS",
    "PROJECTIONS",
    "LoraSlotTable",
    "LoraSlots",
    "LoraWeightsLike",
    "ModelLoraSpec",
    "PackedLora",
    "pack_lora",
]
