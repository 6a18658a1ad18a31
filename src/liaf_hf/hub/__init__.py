"""Sharing a detector: the saved folder and its checks, the model card, and the upload to the Hugging Face Hub."""

from .model_card import add_export_section, write_model_card
from .saved_folder import check_saved_detector
from .upload import push_student, take_over_push_to_hub

__all__ = ["add_export_section", "check_saved_detector", "push_student", "take_over_push_to_hub", "write_model_card"]
