"""MoE² over edge LLMs (papers.md §5): per-request costs of each LLM expert and the two-level expert selection.

Pure numpy, no torch: `wdmoe.ensemble.costs` (what one request costs on each expert, and what a subset costs),
`wdmoe.ensemble.selection` (coarse subset under budgets, fine per-prompt top-k) and `wdmoe.ensemble.baselines`.
"""
