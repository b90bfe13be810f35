"""The example inputs of the Spaces, in one light module (no gradio): the pages show them, the suite benchmark
times them, the tests and the screenshot script submit them."""

from pocketlm.serving.schemas import EXAMPLE_PROMPT

GENERATION_EXAMPLES = [  # prompt, top-k, temperature, max new tokens, seed
    [EXAMPLE_PROMPT, 50, 0.8, 48, 0],
    ["The first world war began in", 20, 0.7, 32, 1],
    ["The album was released in", 50, 1.0, 40, 2],
]

QA_CONTEXT = (
    "The Amazon River in South America is the largest river in the world by discharge volume of water. "
    "It rises in the Andes mountains of Peru, flows east through Colombia and Brazil, and reaches the "
    "Atlantic Ocean near the city of Belém. The river system was first explored by Europeans in 1542, "
    "when Francisco de Orellana travelled its full length."
)
QA_EXAMPLES = [  # question, context
    ["Which ocean does the Amazon River flow into?", QA_CONTEXT],
    ["Who travelled the full length of the river in 1542?", QA_CONTEXT],
    ["In which mountains does the Amazon rise?", QA_CONTEXT],
]

CHAT_EXAMPLES = [  # a question on the RAG dev passages, a follow-up to it, then the mock web search on a page its offline set holds
    "Which NFL team won Super Bowl 50?",
    "Where was the game played?",
    "!search Olmec colossal heads",
]
