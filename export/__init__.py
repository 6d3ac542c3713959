"""softclip.export"""
