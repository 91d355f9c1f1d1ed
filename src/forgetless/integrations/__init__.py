"""Integrations with other stacks (Hugging Face transformers and peft)."""
