"""softclip.training"""
