"""The fine-tuning recipe, run on Ray Train. Read in this order:

    data.py        rows -> rendered prompt/response pairs -> token ids with masked labels
    model.py       base model -> quantized (qlora) / adapter (lora) / full trainable model
    checkpoint.py  what a checkpoint holds (trainable weights, optimizer, scheduler, RNG, step)
    loop.py        the per-worker training loop (resumes from the latest checkpoint)
    run.py         the driver: TorchTrainer + ScalingConfig + RunConfig, live progress
    report.py      loss curve (csv + png) and metrics

Only the TuningJob controller imports this package (torch, ray, transformers, peft).
"""
