"""Data stages: prompt-mixture curation (``curate``) and warm-start SFT data (``sft_data``)."""
