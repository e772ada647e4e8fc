"""Write a tiny random-init Hugging Face model to a folder, to try ``MODEL=hf:<folder>`` offline.

``python examples/tiny_hf_model.py data/models/tiny-dinov2`` saves a 2-block DINOv2 with 4
register tokens (8 px patches, 32 channels) and its image processor with ``save_pretrained``,
the same files ``huggingface-cli download facebook/dinov2-with-registers-small`` would give
you for the real model. Needs ``pip install -e '.[hf]'``.
"""

from __future__ import annotations

import argparse

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="where to save the model (created)")
    args = p.parse_args(argv)
    import transformers

    torch.manual_seed(0)
    config = transformers.Dinov2WithRegistersConfig(num_register_tokens=4, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64, patch_size=8,
                                                    image_size=64)
    transformers.Dinov2WithRegistersModel(config).save_pretrained(args.folder)
    transformers.BitImageProcessor().save_pretrained(args.folder)      # ImageNet mean/std, as DINOv2's
    print(f"saved a tiny DINOv2 with registers to {args.folder}; probe it as MODEL=hf:{args.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
