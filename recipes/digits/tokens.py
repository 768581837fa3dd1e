"""Digit-string vocabulary: ESPnet2 character tokens for the words zero..nine and "oh"."""

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh")

# The digit each word names ("oh" is a spoken zero), used in sample file names.
WORD_TO_DIGIT = {word: str(i) for i, word in enumerate(DIGIT_WORDS[:10])} | {"oh": "0"}

BLANK, UNK, SPACE, SOS_EOS = "<blank>", "<unk>", "<space>", "<sos/eos>"

# ESPnet2 char token list: blank = 0, unk, space, the sorted letters, sos/eos last (V - 1).
TOKEN_LIST = [BLANK, UNK, SPACE, *sorted(set("".join(DIGIT_WORDS))), SOS_EOS]
TOKEN_TO_ID = {token: i for i, token in enumerate(TOKEN_LIST)}
BLANK_ID = TOKEN_TO_ID[BLANK]
SOS_EOS_ID = len(TOKEN_LIST) - 1


def text_to_ids(text: str) -> list[int]:
    """'one oh' -> ids of o, n, e, <space>, o, h (characters; a space becomes <space>)."""
    return [TOKEN_TO_ID.get(SPACE if char == " " else char, TOKEN_TO_ID[UNK]) for char in text]


def ids_to_text(ids) -> str:
    """The inverse of text_to_ids; blank, unk and sos/eos are dropped."""
    characters = []
    for token in (TOKEN_LIST[i] for i in ids):
        if token == SPACE:
            characters.append(" ")
        elif len(token) == 1:
            characters.append(token)
    return "".join(characters)
