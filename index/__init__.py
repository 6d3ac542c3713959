"""softclip.index"""
