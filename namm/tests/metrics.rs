//! The LongBench metrics against values computed by LongBench's own Python code.
//!
//! Unless a test says otherwise, expected values come from python3.11 in a venv with
//! `pip install rouge==1.0.1 fuzzywuzzy==0.18.0` (no python-Levenshtein, so fuzzywuzzy uses
//! difflib), running LongBench's `metrics.py` functions verbatim (jieba import dropped), e.g.
//! `python3 -c 'from metrics import qa_f1_score; print(qa_f1_score("Paris", "paris, France"))'`.

use namm::metrics::{
    all_found, classification_score, code_sim_score, count_score, fuzz_ratio, normalize_answer,
    qa_f1_score, retrieval_score, rouge_l_f, sequence_matcher_ratio, Metric,
};

fn close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-12,
        "got {actual}, expected {expected}"
    );
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn normalize_answer_drops_case_punctuation_articles_and_spacing() {
    // Python: normalize_answer("The Cat's hat, an apple—and a  theory!") ==
    // 'cats hat apple—and theory' (the em dash is not in string.punctuation; "theory" keeps
    // its "the" because \b needs a word boundary after it).
    assert_eq!(
        normalize_answer("The Cat's hat, an apple—and a  theory!"),
        "cats hat apple—and theory"
    );
}

#[test]
fn qa_f1_matches_longbench() {
    // "the cat sat on the mat." -> [cat sat on mat] vs [cat on mat]: overlap 3,
    // P = 3/4, R = 3/3, F1 = 2·0.75·1/1.75 = 6/7 = 0.8571428571428571.
    close(
        qa_f1_score("The cat sat on the mat.", "cat on a mat"),
        0.8571428571428571,
    );
    // [paris] vs [paris france]: P = 1, R = 1/2, F1 = 2/3.
    close(qa_f1_score("Paris", "paris, France"), 0.6666666666666666);
    close(qa_f1_score("nothing here", "Paris"), 0.0);
    // Both normalise to nothing: no overlap, 0 (LongBench returns int 0).
    close(qa_f1_score("the the the", "a"), 0.0);
    // [new york city is big] vs [new york]: P = 2/5, R = 1, F1 = 0.8/1.4 = 0.5714285714285715.
    close(
        qa_f1_score("New York City is big", "new york"),
        0.5714285714285715,
    );
}

#[test]
fn rouge_l_matches_the_rouge_package() {
    // One sentence each; distinct words: hyp {the cat sat on mat} n = 5, ref {the cat is on mat}
    // m = 5; LCS "the cat on the mat" has distinct words {the cat on mat} = 4;
    // P = R = 0.8, F = 2·0.64/(1.6 + 1e-8) = 0.7999999950000002.
    close(
        rouge_l_f("the cat sat on the mat", "the cat is on the mat"),
        0.7999999950000002,
    );
    // Two sentences each, union over sentence pairs: 0.5454545404958678 (python).
    close(
        rouge_l_f(
            "The cat sat. The dog ran.",
            "A cat sat. A dog barked loudly.",
        ),
        0.5454545404958678,
    );
    // Distinct-word counting: hyp "a b c a b" has n = 3, ref "a b" m = 2, LCS words {a b} = 2:
    // P = 2/3, R = 1, F = 0.7999999952000001.
    close(rouge_l_f("a b c a b", "a b"), 0.7999999952000001);
    // The LCS reconstruction keeps the package's tie-break (one LCS of length 2 is kept):
    // 0.4999999950000001 (python).
    close(
        rouge_l_f("police killed the gunman", "the gunman police kill"),
        0.4999999950000001,
    );
    // "x. . y" has the sentences ["x", "", "y"] (the middle one is the empty word):
    // n = 3, m = 2, LCS {x y} = 2: 0.7999999952000001.
    close(rouge_l_f("x. . y", "x y"), 0.7999999952000001);
}

#[test]
fn rouge_l_of_an_empty_prediction_is_zero() {
    // The package raises ValueError("Hypothesis is empty"), LongBench's except returns 0.0;
    // "..." splits into empty pieces only, the same.
    close(rouge_l_f("", "abc"), 0.0);
    close(rouge_l_f("...", "abc"), 0.0);
}

#[test]
fn sequence_matcher_and_fuzz_ratio_match_python() {
    // abcd/bcde: one block "bcd", 2·3/8 = 0.75, fuzz 75.
    close(sequence_matcher_ratio("abcd", "bcde"), 0.75);
    assert_eq!(fuzz_ratio("abcd", "bcde"), 75);
    // 2·17/38 = 0.8947368421052632 -> 89.47 -> 89.
    close(
        sequence_matcher_ratio("    return self.value", "return self.value"),
        0.8947368421052632,
    );
    assert_eq!(fuzz_ratio("    return self.value", "return self.value"), 89);
    // 2·5/16 = 0.625 -> 62.5 -> Python's round-half-even gives 62, not 63.
    assert_eq!(fuzz_ratio("hello world", "hello"), 62);
    // Equal strings short-circuit to 100 before the empty check; one empty string is 0.
    assert_eq!(fuzz_ratio("", ""), 100);
    assert_eq!(fuzz_ratio("a", ""), 0);
}

#[derive(serde::Deserialize)]
struct AutojunkCase {
    a: String,
    b: String,
    ratio: f64,
    fuzz_ratio: u32,
    ratio_without_autojunk: f64,
}

#[test]
fn sequence_matcher_applies_difflib_autojunk_on_long_strings() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/difflib_autojunk.json"
    ))
    .expect("fixture");
    let case: AutojunkCase = serde_json::from_str(&text).expect("fixture json");
    close(sequence_matcher_ratio(&case.a, &case.b), case.ratio);
    assert_eq!(fuzz_ratio(&case.a, &case.b), case.fuzz_ratio);
    assert!((case.ratio - case.ratio_without_autojunk).abs() > 1e-3);
}

#[test]
fn sequence_matcher_long_small_alphabet_keeps_difflib_extension_quirk() {
    // b = 240 characters over "ab cd": each occurs more than 240/100 + 1 = 3 times, so autojunk
    // removes all of them from the index and no block can start; difflib still extends the empty
    // match at (0, 0) over equal neighbours ("ab c" = "ab c", then 'a' != 'd'), so M = 4:
    // python: SequenceMatcher(None, "ab c"*65, "ab cd"*48).ratio() = 2·4/500 = 0.016,
    // fuzz.ratio = round(1.6) = 2.
    let a = "ab c".repeat(65);
    let b = "ab cd".repeat(48);
    close(sequence_matcher_ratio(&a, &b), 0.016);
    assert_eq!(fuzz_ratio(&a, &b), 2);
}

#[test]
fn code_sim_takes_the_first_line_without_comment_marks() {
    // Lines after lstrip('\n'): "# comment" (skipped), "    x = foo(1)":
    // fuzz.ratio("    x = foo(1)", "x = foo(2)") = round(100·2·9/24) = 75.
    close(
        code_sim_score("\n# comment\n    x = foo(1)\n", "x = foo(2)"),
        0.75,
    );
    // Every line has a mark except the final empty one, which is taken: ratio("", ...) = 0.
    close(code_sim_score("```python\n// c\n", "x = 1"), 0.0);
}

#[test]
fn classification_matches_longbench_including_its_quirks() {
    // trec-like classes; expected values from LongBench's classification_score (python).
    let classes = strings(&[
        "Location",
        "City",
        "Country",
        "Description",
        "Abbreviation",
        "Expression abbreviated",
        "Manner of an action",
        "Definition of something",
        "Other location",
    ]);
    close(classification_score("City", "City", &classes), 1.0);
    // Two classes named: 1/2.
    close(
        classification_score("City or Country", "City", &classes),
        0.5,
    );
    // Case-sensitive substring test: "Location" is not in "Other location".
    close(
        classification_score("Other location", "Location", &classes),
        0.0,
    );
    close(
        classification_score("Location", "Other location", &classes),
        0.0,
    );
    close(
        classification_score("Other location", "Other location", &classes),
        1.0,
    );
    close(
        classification_score("Expression abbreviated", "Abbreviation", &classes),
        0.0,
    );
    // No class named: LongBench's difflib fallback is dead code, so 0.
    close(classification_score("nothing", "City", &classes), 0.0);
    // Removing while iterating: matches [a ab abc abcd]; "a" is removed, the iterator then
    // skips "ab" and removes "abc", leaving [ab abcd]: python gives 0.5 (not 1.0).
    let nested = strings(&["a", "ab", "abc", "abcd"]);
    close(classification_score("abcd", "abcd", &nested), 0.5);
}

#[test]
fn retrieval_and_count_score_fractions_of_numbers() {
    // Digit runs ["3"] all equal the gold id 3.
    close(retrieval_score("Paragraph 3", "Paragraph 3"), 1.0);
    // ["3", "12"]: 1 of 2.
    close(
        retrieval_score("Paragraph 3 or Paragraph 12", "Paragraph 3"),
        0.5,
    );
    close(retrieval_score("I don't know", "Paragraph 3"), 0.0);
    // "30" is not "3".
    close(retrieval_score("Paragraph 30", "Paragraph 3"), 0.0);
    // A malformed gold answer scores 0 instead of raising.
    close(retrieval_score("Paragraph 3", "the third one"), 0.0);
    // ["11", "2", "11"] vs "11": 2/3.
    close(
        count_score("11 paragraphs, 2 are duplicates, so 11", "11"),
        2.0 / 3.0,
    );
    close(count_score("eleven", "11"), 0.0);
}

#[test]
fn metric_score_takes_the_best_answer() {
    // qa_f1 against two answers: "paris" vs "paris, France" = 2/3, vs "Paris" = 1.
    close(
        Metric::QaF1.score("Paris", &strings(&["paris, France", "Paris"])),
        1.0,
    );
    close(
        Metric::QaF1.score("Paris", &strings(&["paris, France", "Lyon"])),
        0.6666666666666666,
    );
    close(Metric::QaF1.score("Paris", &[]), 0.0);
    let classes = strings(&["City", "Country"]);
    close(
        Metric::Classification {
            all_classes: classes,
        }
        .score("Country", &strings(&["Country"])),
        1.0,
    );
}

#[test]
fn all_found_is_a_recall_of_whole_occurrences() {
    close(
        all_found("The pass key is 12345.", &strings(&["12345"])),
        1.0,
    );
    // Glued to other digits: not the key.
    close(
        all_found("The pass key is 712345.", &strings(&["12345"])),
        0.0,
    );
    // Case-insensitive; 2 of 4 variables named.
    close(
        all_found(
            "they are: abcde, FGHIJ, KLMNOPQ",
            &strings(&["ABCDE", "FGHIJ", "KLMNO", "PQRST"]),
        ),
        0.5,
    );
    close(all_found("anything", &[]), 0.0);
}

#[test]
fn metric_round_trips_through_json() {
    let metric = Metric::Classification {
        all_classes: strings(&["A", "B"]),
    };
    let json = serde_json::to_string(&metric).unwrap();
    assert_eq!(json, r#"{"kind":"classification","all_classes":["A","B"]}"#);
    assert_eq!(serde_json::from_str::<Metric>(&json).unwrap(), metric);
}

#[derive(serde::Deserialize)]
struct DifferentialCases {
    cases: Vec<DifferentialCase>,
}

#[derive(serde::Deserialize)]
struct DifferentialCase {
    metric: String,
    prediction: String,
    answer: String,
    #[serde(default)]
    all_classes: Vec<String>,
    expected: f64,
}

#[test]
fn random_cases_match_longbench_python() {
    // 440 random (prediction, answer) pairs scored by LongBench's metrics.py; generated by
    // tests/fixtures/longbench_metric_cases.py (the command is in its header).
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/longbench_metric_cases.json"
    ))
    .expect("fixture");
    let cases: DifferentialCases = serde_json::from_str(&text).expect("fixture json");
    assert_eq!(cases.cases.len(), 440);
    for case in &cases.cases {
        let (p, g) = (case.prediction.as_str(), case.answer.as_str());
        let actual = match case.metric.as_str() {
            "qa_f1" => qa_f1_score(p, g),
            "rouge_l" => rouge_l_f(p, g),
            "code_sim" => code_sim_score(p, g),
            "count" => count_score(p, g),
            "retrieval" => retrieval_score(p, g),
            "classification" => classification_score(p, g, &case.all_classes),
            other => panic!("unknown metric {other}"),
        };
        assert!(
            (actual - case.expected).abs() < 1e-12,
            "{}({p:?}, {g:?}) = {actual}, python says {}",
            case.metric,
            case.expected
        );
    }
}
