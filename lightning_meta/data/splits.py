"""Published class splits of CIFAR-100 for few-shot learning, written out so that no download is needed for them."""

# CIFAR-FS (Bertinetto, Henriques, Torr and Vedaldi, "Meta-learning with differentiable closed-form solvers",
# ICLR 2019): 64 / 16 / 20 of CIFAR-100's fine classes, as in the authors' split files (bertinetto/r2d2,
# data/cifar-fs/splits/bertinetto/{train,val,test}.txt).
CIFAR_FS = {
    "train": [
        "train", "skyscraper", "turtle", "raccoon", "spider", "orange", "castle", "keyboard", "clock", "pear",
        "girl", "seal", "elephant", "apple", "aquarium_fish", "bus", "mushroom", "possum", "squirrel", "chair",
        "tank", "plate", "wolf", "road", "mouse", "boy", "shrew", "couch", "sunflower", "tiger", "caterpillar",
        "lion", "streetcar", "lawn_mower", "tulip", "forest", "dolphin", "cockroach", "bear", "porcupine", "bee",
        "hamster", "lobster", "bowl", "can", "bottle", "trout", "snake", "bridge", "pine_tree", "skunk", "lizard",
        "cup", "kangaroo", "oak_tree", "dinosaur", "rabbit", "orchid", "willow_tree", "ray", "palm_tree",
        "mountain", "house", "cloud",
    ],
    "val": [
        "otter", "motorcycle", "television", "lamp", "crocodile", "shark", "butterfly", "beaver", "beetle",
        "tractor", "flatfish", "maple_tree", "camel", "crab", "sea", "cattle",
    ],
    "test": [
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy", "rocket",
        "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm",
    ],
}  # fmt: skip

# FC100 (Oreshkin, Rodriguez and Lacoste, "TADAM: Task dependent adaptive metric for improved few-shot learning",
# NeurIPS 2018): CIFAR-100 split by its 20 superclasses, 12 / 4 / 4 (60 / 20 / 20 fine classes), so that no
# superclass spans two splits.
FC100 = {
    "train": [
        "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
        "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles", "trees",
        "vehicles_1", "vehicles_2",
    ],
    "val": ["large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"],
    "test": ["aquatic_mammals", "insects", "medium_mammals", "people"],
}  # fmt: skip
