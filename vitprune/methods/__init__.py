"""The pruning methods, each a patch over timm's VisionTransformer that declares itself once
(`method`: the `Method` record) and is listed by name in `registry`:

- `dynamicvit`: DynamicViT's learned token pruning, with its objective (`dynamicvit_loss`) and the
  released checkpoints' layout (`dynamicvit_io`); `token_schedule`: keep ratios and counts;
- `training_free`: CLS-attention top-k token pruning (EViT's selection alone), nothing trained;
- `evit`: EViT, the attentive tokens kept and the rest fused into one, fine-tuned;
- `merging`: ToMe's token merging, as its official code computes it, as applied or fine-tuned;
- `block_pruning`: heads and MLP channels, with their gates (`block_masks`), importance scores
  (`block_importance`) and physical removal (`block_removal`);
- shared: `vit_ops` (block-level forward pieces), `selection` (token rankings both runtimes
  agree on), `pruning_state` (the settings a pruned model carries).
"""
