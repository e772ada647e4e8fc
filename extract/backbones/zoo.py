"""The paper's 22 self-supervised backbones (17 ResNet-50, 5 ViT-B/16) and two supervised references.

Each loads its source's published *pretraining* checkpoint (not a linear-eval or
fine-tuned one) into a timm ``resnet50`` / ``vit_base_patch16_224`` through the source's
:class:`~extract.backbones.checkpoints.CheckpointFormat`, strictly. Where the paper's code
made a different choice, ``+<option>`` selects it (``+paper`` selects all of them).
Facts per file (URL, variant, licence) follow the sources' READMEs and model zoos.
"""

from __future__ import annotations

from extract.backbones import checkpoints as ck

FAIR = "https://dl.fbaipublicfiles.com"
VISSL_ZOO = f"{FAIR}/vissl/model_zoo"
MMSELFSUP = "https://download.openmmlab.com/mmselfsup/1.x"
VISSL_LICENSE = "MIT (VISSL; no separate weights licence)"

# name, method, source, format, url, cached file name, variant, licence, checksum
RESNETS = [
    ("rn50_jigsaw", "Jigsaw", "VISSL model zoo", ck.VISSL,
     f"{VISSL_ZOO}/jigsaw_rn50_in1k_ep105_perm2k_jigsaw_8gpu_resnet_17_07_20.db174a43/model_final_checkpoint_phase104.torch",
     "jigsaw_resnet50.torch", "105 epochs; the zoo lists this file as 100 permutations despite 'perm2k' in its path",
     VISSL_LICENSE, None),
    ("rn50_rotnet", "RotNet", "VISSL model zoo", ck.VISSL,
     f"{VISSL_ZOO}/rotnet_rn50_in1k_ep105_rotnet_8gpu_resnet_17_07_20.46bada9f/model_final_checkpoint_phase125.torch",
     "rotnet_resnet50.torch", "105 epochs", VISSL_LICENSE, None),
    ("rn50_npid", "NPID", "VISSL model zoo (converted lemniscate.pytorch)", ck.VISSL_CONVERTED,
     f"{VISSL_ZOO}/converted_vissl_rn50_npid_lemniscate_neg4k_stepLR_8gpu.torch",
     "npid_resnet50.torch", "4k negatives, step LR (official release, converted)",
     "not stated (lemniscate.pytorch weights)", None),
    ("rn50_npidpp", "NPID++", "VISSL model zoo", ck.VISSL,
     f"{VISSL_ZOO}/npid_pp/4node_800ep_32kneg_cosine_resnet_23_07_20.75432662/model_final_checkpoint_phase799.torch",
     "npid_plusplus_resnet50.torch", "32k negatives, 800 epochs, cosine LR", VISSL_LICENSE, None),
    ("rn50_pirl", "PIRL", "VISSL model zoo", ck.VISSL,
     f"{VISSL_ZOO}/pirl_jigsaw_4node_pirl_jigsaw_4node_resnet_22_07_20.34377f59/model_final_checkpoint_phase799.torch",
     "pirl_resnet50.torch", "800 epochs", VISSL_LICENSE, None),
    ("rn50_clusterfit", "ClusterFit", "VISSL model zoo", ck.VISSL,
     f"{VISSL_ZOO}/converted_vissl_rn50_rotnet_16kclusters_in1k_ep105.torch",
     "clusterfit_resnet50.torch", "16k clusters from RotNet, 105 epochs", VISSL_LICENSE, None),
    ("rn50_simclr", "SimCLR", "VISSL model zoo", ck.VISSL,
     f"{VISSL_ZOO}/simclr_rn50_1000ep_simclr_8node_resnet_16_07_20.afe428c7/model_final_checkpoint_phase999.torch",
     "simclr_resnet50.torch", "1000 epochs", VISSL_LICENSE, None),
    ("rn50_selav2", "SeLa-v2", "SwAV repository", ck.SWAV, f"{FAIR}/deepcluster/selav2_400ep_pretrain.pth.tar",
     "sela_resnet50.pth.tar", "400 epochs, multi-crop 2x160+4x96", "cc-by-nc-4.0", None),
    ("rn50_deepclusterv2", "DeepCluster-v2", "SwAV repository", ck.SWAV,
     f"{FAIR}/deepcluster/deepclusterv2_800ep_pretrain.pth.tar", "deepcluster_resnet50.pth.tar",
     "800 epochs, multi-crop 2x224+6x96", "cc-by-nc-4.0", None),
    ("rn50_swav", "SwAV", "SwAV repository", ck.SWAV, f"{FAIR}/deepcluster/swav_800ep_pretrain.pth.tar",
     "swav_resnet50.pth.tar", "800 epochs, multi-crop 2x224+6x96", "cc-by-nc-4.0", None),
    ("rn50_mocov2", "MoCo v2", "MoCo repository", ck.MOCO_V2,
     f"{FAIR}/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar", "mocov2_resnet50.pth.tar",
     "800 epochs", "MIT (relicensed 2023; the README still says cc-by-nc-4.0)", ("md5", "a04e12f8")),
    ("rn50_simsiam", "SimSiam", "MMSelfSup model zoo", ck.MMSELFSUP_RESNET,
     f"{MMSELFSUP}/simsiam/simsiam_resnet50_8xb32-coslr-200e_in1k/simsiam_resnet50_8xb32-coslr-200e_in1k_20220825-efe91299.pth",
     "simsiam_resnet50_8xb32-coslr-200e_in1k_20220825-efe91299.pth", "200 epochs, batch 8x32", "apache-2.0",
     ("sha256", "efe91299")),
    ("rn50_barlowtwins", "Barlow Twins", "MMSelfSup model zoo", ck.MMSELFSUP_RESNET,
     f"{MMSELFSUP}/barlowtwins/barlowtwins_resnet50_8xb256-coslr-300e_in1k/barlowtwins_resnet50_8xb256-coslr-300e_in1k_20220825-57307488.pth",
     "barlowtwins_resnet50_8xb256-coslr-300e_in1k_20220825-57307488.pth", "300 epochs, batch 8x256", "apache-2.0",
     ("sha256", "57307488")),
    ("rn50_byol", "BYOL", "yaox12/BYOL-PyTorch reproduction", ck.BYOL,
     "https://drive.usercontent.google.com/download?id=1TLZHDbV-qQlLjkR8P0LZaxzwEE6O_7g1&export=download&confirm=t",
     "byol_resnet50.pth.tar", "300 epochs (unofficial reproduction, 72.3 % linear)",
     "not stated (repository MIT)", None),
    ("rn50_densecl", "DenseCL", "DenseCL repository (Hugging Face xinlongwang/DenseCL)", ck.DENSECL,
     "https://huggingface.co/xinlongwang/DenseCL/resolve/main/densecl_r50_imagenet_200ep.pth",
     "densecl_resnet50.pth", "200 epochs", "gpl-3.0 (repository)", None),
    ("rn50_dino", "DINO", "DINO repository", ck.PLAIN,
     f"{FAIR}/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth", "dino_resnet50_pretrain.pth",
     "backbone only, 75.3 % linear", "apache-2.0", None),
    ("rn50_mocov3", "MoCo v3", "MoCo v3 repository", ck.MOCO_V3_BASE,
     f"{FAIR}/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar", "mocov3_resnet50.pth.tar", "1000 epochs",
     "cc-by-nc-4.0", None),
]

VITS = [
    ("vit_b_dino", "DINO", "DINO repository", ck.PLAIN,
     f"{FAIR}/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth", "dino_vitbase16_pretrain.pth",
     "ViT-B/16 teacher backbone", "apache-2.0", None),
    ("vit_b_mocov3", "MoCo v3", "MoCo v3 repository", ck.MOCO_V3_BASE,
     f"{FAIR}/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar", "mocov3_vitb16.pth.tar", "300 epochs", "cc-by-nc-4.0", None),
    ("vit_b_ibot", "iBOT", "iBOT repository", ck.IBOT,
     "https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot/vitb_16/checkpoint_teacher.pth",
     "ibot_vitb16_checkpoint_teacher.pth", "ViT-B/16 block masking, teacher backbone", "apache-2.0", None),
    ("vit_b_mae", "MAE", "MAE repository", ck.MAE, f"{FAIR}/mae/pretrain/mae_pretrain_vit_base.pth",
     "mae_pretrain_vit_base.pth", "ViT-B/16 pretrain (norm-pix loss), 1600 epochs", "cc-by-nc-4.0",
     ("md5", "8cad7c")),     # the md5 prefix in the MAE README's checkpoint table
    ("vit_b_maskfeat", "MaskFeat", "MMSelfSup model zoo", ck.MMSELFSUP_VIT,
     f"{MMSELFSUP}/maskfeat/maskfeat_vit-base-p16_8xb256-amp-coslr-300e_in1k/maskfeat_vit-base-p16_8xb256-amp-coslr-300e_in1k_20221101-6dfc8bf3.pth",
     "maskfeat_vit-base-p16_8xb256-amp-coslr-300e_in1k_20221101-6dfc8bf3.pth", "300 epochs, HOG targets",
     "apache-2.0", ("sha256", "6dfc8bf3")),
]

MOMENTUM = {"momentum": {"checkpoint": ck.MOCO_V3_MOMENTUM}}
OPTIONS = {
    "rn50_mocov3": MOMENTUM,
    "vit_b_mocov3": {**MOMENTUM, "dense-cls": {"dense_cls": True}},
    "vit_b_maskfeat": {"dense-cls": {"dense_cls": True}},
    "vit_b_mae": {
        # HF's ViTMAE LayerNorms use config.layer_norm_eps = 1e-12 (timm's ViT 1e-6); HF publishes no digest
        "hf": {"checkpoint": ck.HF_VITMAE, "url": "https://huggingface.co/facebook/vit-mae-base/resolve/main/pytorch_model.bin",
               "filename": "hf_facebook_vit-mae-base_pytorch_model.bin", "license": "apache-2.0 (model card; MAE repo is cc-by-nc-4.0)",
               "variant": "Hugging Face facebook/vit-mae-base, the weights the paper loaded (most likely MAE's "
                          "plain-pixel mae_visualize_vit_base, converted)", "checksum": None, "layer_norm_eps": 1e-12},
        "paper-layers": {"layers": (1, 4, 7, 10)},
        # the paper rebuilds the exact sin-cos table for every input grid (mae.py:74-89)
        "sincos": {"pos_embed": "sincos"},
    },
}
PAPER_OPTIONS = {"rn50_mocov3": ("momentum",), "vit_b_mocov3": ("momentum",),
                 "vit_b_mae": ("hf", "paper-layers", "sincos")}
NOTES = {
    "rn50_mocov3": "the paper's loader let the momentum encoder overwrite the base encoder (+momentum)",
    "vit_b_mocov3": "the paper evaluated the momentum encoder (+momentum); its yaml's dense-cls was ignored by the wrapper",
    "vit_b_mae": "the paper loaded HF facebook/vit-mae-base (+hf, LayerNorm eps 1e-12), took hidden_states[2,5,8,11] "
                 "= blocks 1,4,7,10 (+paper-layers) and an exact sin-cos position table per grid (+sincos)",
    "vit_b_ibot": "the paper loaded with strict=False; here strictly",
    "vit_b_maskfeat": "its yaml's dense-cls was ignored by the paper's wrapper (+dense-cls concatenates CLS)",
}
