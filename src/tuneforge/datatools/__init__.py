"""Data tools behind `tuneforge data`: check (every problem, with file:line), prepare (normalise, dedupe,
scrub PII, convert, split, data card) and bias (counterfactual probes before vs after a tune).

    tuneforge data check train.jsonl --stage sft
"""
