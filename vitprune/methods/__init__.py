"""The pruning methods, each over timm's VisionTransformer: DynamicViT token pruning (`dynamicvit`,
released-checkpoint layout in `dynamicvit_io`), training-free EViT-style pruning (`training_free`),
ToMe merging (`merging`), block pruning of heads and MLP channels (`block_pruning`, `block_removal`);
`vit_ops` holds the block-level forward pieces they share, `pruning_state` what a model carries."""
