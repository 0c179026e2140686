"""Generated from proto/quota/v1 by scripts/gen_proto.py; do not edit."""
