//! Deterministic filler text. Words come from a fixed vocabulary of plain lowercase words, each
//! one token under word-level tokenizers such as the simulator's, so a count of words is a
//! count of prompt tokens (real tokenizers land within a small factor of it).

/// The vocabulary. Plain ASCII letters only: no punctuation, so no word splits in two.
const VOCABULARY: [&str; 128] = [
    "able", "acid", "aged", "also", "area", "army", "away", "baby", "back", "ball", "band", "bank",
    "base", "bath", "bear", "beat", "bell", "belt", "best", "bird", "blow", "blue", "boat", "body",
    "bone", "book", "born", "both", "bowl", "bulk", "burn", "bush", "busy", "cake", "call", "calm",
    "camp", "card", "care", "case", "cash", "cast", "cell", "chat", "chip", "city", "club", "coal",
    "coat", "code", "cold", "come", "cook", "cool", "cope", "copy", "core", "cost", "crew", "crop",
    "dark", "data", "date", "dawn", "deal", "dear", "debt", "deep", "deny", "desk", "diet", "disk",
    "door", "dose", "down", "draw", "drop", "drum", "dual", "duke", "dust", "duty", "each", "earn",
    "ease", "east", "easy", "edge", "else", "even", "ever", "exit", "face", "fact", "fair", "fall",
    "farm", "fast", "fate", "fear", "feed", "feel", "file", "fill", "film", "find", "fine", "fire",
    "firm", "fish", "five", "flat", "flow", "food", "foot", "form", "fort", "four", "free", "fuel",
    "full", "fund", "gain", "game", "gate", "gear", "gift", "girl",
];

/// A seed for one independent stream of text, mixed from a base seed and a path of labels
/// (e.g. `[SYSTEM, group]`), so that every piece of text is reproducible on its own, in any
/// order, whatever the timing of the run.
pub fn derive_seed(seed: u64, path: &[u64]) -> u64 {
    path.iter().fold(splitmix(seed), |acc, &part| {
        splitmix(acc ^ part.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    })
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `count` vocabulary words separated by single spaces, drawn from `rng`.
pub fn words(rng: &mut fastrand::Rng, count: usize) -> String {
    let mut text = String::with_capacity(count * 5);
    for i in 0..count {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(VOCABULARY[rng.usize(..VOCABULARY.len())]);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_words() {
        let a = words(&mut fastrand::Rng::with_seed(7), 50);
        let b = words(&mut fastrand::Rng::with_seed(7), 50);
        let c = words(&mut fastrand::Rng::with_seed(8), 50);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.split(' ').count(), 50);
        assert!(words(&mut fastrand::Rng::with_seed(1), 0).is_empty());
    }

    #[test]
    fn vocabulary_is_single_plain_words() {
        for w in VOCABULARY {
            assert!(w.bytes().all(|b| b.is_ascii_lowercase()), "{w}");
        }
        let mut sorted = VOCABULARY.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), VOCABULARY.len());
    }

    #[test]
    fn derived_seeds_differ_by_path() {
        assert_eq!(derive_seed(1, &[2, 3]), derive_seed(1, &[2, 3]));
        assert_ne!(derive_seed(1, &[2, 3]), derive_seed(1, &[3, 2]));
        assert_ne!(derive_seed(1, &[2]), derive_seed(2, &[2]));
    }
}
