"""The trainable model for each method.

    qlora  base weights quantized to 4 bits (bitsandbytes NF4/FP4) and frozen; LoRA adapters
           in full precision on top (prepare_model_for_kbit_training first)
    lora   base weights frozen in full precision (or 8-bit when quantization.bits is 8)
    full   every weight trained
"""

from __future__ import annotations

from pathlib import Path

from ..models.loaded import load_causal_lm


def build_trainable_model(base_path: Path, method: str, quantization: dict | None, lora: dict, device: str):
    model = load_causal_lm(base_path, quantization, device)
    if method == "full":
        model.train()
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantization:
        # Casts norms to fp32, enables input grads; gradient checkpointing only pays off on GPU.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=device != "cpu")
    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"],
        modules_to_save=lora["modules_to_save"] or None,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    model.train()
    return model


def trainable_state(model) -> dict:
    """Only the weights that train (adapters, modules_to_save, or everything for full)."""
    names = {name for name, param in model.named_parameters() if param.requires_grad}
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items() if name in names}
