"""Chat: conversations, their token template, the calculator tool, synthetic chat tasks, SFT data and scoring.

    calculator.py      evaluate(expression) -> str: the safe calculator the decode core runs for tool calls
    template.py        render_conversation(conversation, tokenizer) -> (ids, mask); render_for_generation
"""
