//! The ChatML prompt format (`<|im_start|>role\n…<|im_end|>\n`) and the default system turn a
//! GGUF's Jinja `tokenizer.chat_template` inserts when a conversation has none.

/// The part of the chat template the engine needs: ChatML, plus the system turn the template
/// prepends when the first message is not a system message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// The rendered default system turn, `<|im_start|>system\n…<|im_end|>\n`, if any.
    pub default_system_turn: Option<String>,
    /// Whether the GGUF has a chat template at all (a chat model).
    pub present: bool,
}

/// The guard SmolLM2's (and most ChatML) templates put around their default system turn.
const NO_SYSTEM_GUARD: &str = "messages[0]['role'] != 'system'";

impl ChatTemplate {
    /// Reads the default system turn out of a Jinja chat template. Only the one construct ChatML
    /// templates use is understood: `{% if … messages[0]['role'] != 'system' %}{{ '<literal>' }}`.
    pub fn from_jinja(template: &str) -> Self {
        let default_system_turn = template
            .find(NO_SYSTEM_GUARD)
            .and_then(|at| first_output_literal(&template[at..]))
            .filter(|turn| turn.starts_with("<|im_start|>system"));
        Self {
            default_system_turn,
            present: !template.trim().is_empty(),
        }
    }

    pub fn render(&self, system: Option<&str>, user: &str) -> String {
        let mut turns = Vec::with_capacity(2);
        turns.extend(system.map(|s| ("system", s)));
        turns.push(("user", user));
        self.render_conversation(&turns)
    }

    /// A conversation of `(role, content)` turns, ending where the assistant's answer starts;
    /// the default system turn goes first unless the first turn is a system one.
    pub fn render_conversation(&self, turns: &[(&str, &str)]) -> String {
        let size: usize = turns.iter().map(|(r, c)| r.len() + c.len() + 24).sum();
        let mut prompt = String::with_capacity(size + 128);
        if turns.first().is_none_or(|(role, _)| *role != "system") {
            if let Some(turn) = &self.default_system_turn {
                prompt.push_str(turn);
            }
        }
        for (role, content) in turns {
            push_turn(&mut prompt, role, content);
        }
        prompt.push_str("<|im_start|>assistant\n");
        prompt
    }
}

fn push_turn(prompt: &mut String, role: &str, content: &str) {
    prompt.push_str("<|im_start|>");
    prompt.push_str(role);
    prompt.push('\n');
    prompt.push_str(content);
    prompt.push_str("<|im_end|>\n");
}

/// The string literal of the first `{{ '…' }}` (or `"…"`) output block in `text`, with Jinja
/// escapes resolved; `None` when that block is anything but a single literal.
fn first_output_literal(text: &str) -> Option<String> {
    let open = text.find("{{")?;
    let body = text[open + 2..].trim_start();
    let quote = body.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let mut literal = String::new();
    let mut chars = body[1..].char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => match chars.next()?.1 {
                'n' => literal.push('\n'),
                't' => literal.push('\t'),
                other => literal.push(other),
            },
            c if c == quote => {
                let rest = &body[1 + at + c.len_utf8()..];
                return rest.trim_start().starts_with("}}").then_some(literal);
            }
            c => literal.push(c),
        }
    }
    None
}
