"""Pure domain logic of hal: questionnaires, dialogues, judges' contracts, rewards, statistics."""
