"""Chat: conversations, their token template, the calculator tool, synthetic chat tasks, SFT data and scoring.

    template.py        render_conversation(conversation, tokenizer) -> (ids, mask); render_for_generation
    conversations.py   load_conversations(source): JSONL from a file, https:// or hf://, bad lines named
    packing.py         best-fit packing of rendered conversations into rows (PackedSampler, ConversationDataset)
    tasks.py           builtin:chat-tasks: spell, reverse, count, arithmetic with the calculator, identity
    calculator.py      evaluate(expression) -> str: the safe calculator the decode core runs for tool calls
    evaluate.py        evaluate_chat: held-out accuracy per task (embergpt eval --tasks chat)

SFT itself is `embergpt.train` with stage="sft" (embergpt.train.sft sets it up); `embergpt sft` runs it.
"""
