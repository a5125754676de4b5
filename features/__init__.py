"""The one feature code path, pure and torch-free: validation, sessions, decay, user/item
features, co-visitation, label joins, ranking-feature assembly and the offline builder."""
