"""Questions whose answers learning must leave as they were.

While an adapter learns memories, these questions are asked too, with the
untouched model's own answers as targets, so that what the adapter changes
is what it learned and little else. They are general, about nothing a user
would store: the world, arithmetic, language, everyday things.
"""

QUESTIONS = (
    "What is the capital of Italy?",
    "What is the capital of Japan?",
    "How many days are in a week?",
    "What is two plus two?",
    "What is ten minus four?",
    "Who painted the Mona Lisa?",
    "What colour is the sky on a clear day?",
    "How many legs does a dog have?",
    "What is the largest ocean?",
    "What do bees make?",
    "What is the boiling point of water?",
    "Name a primary colour.",
    "What is the chemical symbol for gold?",
    "How many hours are in a day?",
    "What is the opposite of hot?",
    "Which planet is known as the red planet?",
    "What do cows drink?",
    "Name a musical instrument.",
    "What is the tallest mountain in the world?",
    "What language is spoken in Brazil?",
    "How many continents are there?",
    "What is the plural of mouse?",
    "What shape has four equal sides?",
    "Who wrote Hamlet?",
    "What is the currency of the United Kingdom?",
    "What is a baby dog called?",
    "Name a fruit that is yellow.",
    "What do you call a person who repairs teeth?",
    "How many minutes are in an hour?",
    "What season comes after winter?",
    "What is the largest desert?",
    "What do caterpillars turn into?",
    "Write a short greeting.",
    "Give me a word that rhymes with cat.",
    "What is the square root of nine?",
    "What metal is a magnet attracted to?",
    "Tell me a fact about the moon.",
    "What is the main language of Australia?",
    "What do you wear on your feet?",
    "How do you say hello in French?",
)
