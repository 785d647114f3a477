"""Robust aggregation: defences that compare what clients change, the LoRA products B·A."""
