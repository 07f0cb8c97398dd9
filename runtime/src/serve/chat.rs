//! Chat prompts: the checkpoint's Jinja chat template (from its `tokenizer_config.json`,
//! carried in the engine's manifest) rendered with minijinja the way transformers renders
//! it — `trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, Error, ErrorKind, Value, context};
use serde::Serialize;

/// One message of a conversation.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles `source`; an error says where the template is wrong.
    pub fn new(source: String, bos: Option<String>, eos: Option<String>) -> Result<Self, String> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| format!("chat template syntax: {e}"))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned(NAME, source)
            .map_err(|e| format!("the engine's chat template does not compile: {e:#}"))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos.unwrap_or_default(),
            eos_token: eos.unwrap_or_default(),
        })
    }

    /// The prompt text of `messages`, ending where the assistant's reply begins.
    pub fn render(&self, messages: &[Message]) -> Result<String, String> {
        let t = self
            .env
            .get_template(NAME)
            .map_err(|e| format!("chat template: {e}"))?;
        t.render(context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => true,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
        })
        .map_err(|e| format!("the chat template cannot render these messages: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_transformers() {
        let src = "{{ bos_token }}{% for m in messages %}\n<|{{ m.role }}|>\n{{ m.content.strip() }}{{ eos_token }}\n{% endfor %}\n{% if add_generation_prompt %}<|assistant|>\n{% endif %}";
        let t = ChatTemplate::new(src.into(), Some("<s>".into()), Some("</s>".into())).unwrap();
        let text = t
            .render(&[Message {
                role: "user".into(),
                content: "  hi  ".into(),
            }])
            .unwrap();
        assert_eq!(text, "<s><|user|>\nhi</s>\n<|assistant|>\n");
        let strict = ChatTemplate::new(
            "{{ raise_exception('only user messages') }}".into(),
            None,
            None,
        )
        .unwrap();
        let e = strict.render(&[]).unwrap_err();
        assert!(e.contains("only user messages"), "{e}");
        assert!(ChatTemplate::new("{% if %}".into(), None, None).is_err());
    }
}
