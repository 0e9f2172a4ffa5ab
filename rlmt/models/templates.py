"""Chat templates of the tiny zoo, with the structure of the real families they stand in for.

- ``LLAMA3_TEMPLATE``: Llama-3.1-Instruct's header/eot structure.
- ``CHATML_TEMPLATE``: Qwen2.5's ChatML, with its default system turn.
- ``REWARD_TEMPLATE``: a deliberately different ``[INST]`` structure for the tiny reward model, so
  that every test re-templates from the policy's format to the reward model's.

Assistant content sits inside ``{% generation %}`` blocks so that TRL's assistant-only loss can
find it (``return_assistant_tokens_mask``).
"""

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- generation %}{{- message['content'] | trim }}{{- '<|eot_id|>' }}{%- endgeneration %}"
    "{%- else %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

CHATML_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] }}{{- '<|im_end|>' }}{%- endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

REWARD_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] | trim + eos_token }}"
    "{%- else %}{{- '[SYS] ' + message['content'] | trim + ' [/SYS]' }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# Special tokens per family (the real families' names, so configs and pad choices carry over).
LLAMA_SPECIALS = {
    "bos": "<|begin_of_text|>",
    "base_eos": "<|end_of_text|>",
    "chat_eos": "<|eot_id|>",
    "pad": "<|reserved_special_token_5|>",  # the paper's SFT pad token for Llama
    "extra": ["<|start_header_id|>", "<|end_header_id|>"],
}
QWEN_SPECIALS = {
    "bos": None,
    "base_eos": "<|endoftext|>",
    "chat_eos": "<|im_end|>",
    "pad": "<|fim_pad|>",  # the paper's SFT pad token for Qwen
    "extra": ["<|im_start|>"],
}
REWARD_SPECIALS = {
    "bos": "<s>",
    "base_eos": "</s>",
    "chat_eos": "</s>",
    "pad": "<pad>",
    "extra": [],
}
