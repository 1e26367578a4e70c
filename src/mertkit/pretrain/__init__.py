"""MERT-v1 pre-training: masked prediction of EnCodec codes plus CQT reconstruction.

Modules, in the order a batch flows through them:

* `config`   - `PretrainConfig`, the one flat dataclass a run is described by (presets in
               `mertkit/presets/*.json`), saved inside every checkpoint;
* `data`     - deterministic random crops of an audio folder with frame-aligned labels;
* `masking`  - HuBERT-style span masks;
* `mixture`  - in-batch noise mixture (other clips of the batch added as "noise");
* `model`    - `MertPretrainModel`: the inference `MertModel` plus the pre-training heads;
* `trainer`  - the training loop (single process, or DDP under `torchrun`);
* `export`   - a training checkpoint to the official Hugging Face layout;
* `kmeans`, `data2vec` - the MERT-v0 (k-means labels) and music2vec (data2vec) paradigms.

Import the submodules directly; this package imports nothing heavy on its own.
"""
