"""Scripted user and LLM user."""

from hero_gym.envs.tau_bench.data import Action, Task
from hero_gym.envs.tau_bench.env import TauRetailEnv
from hero_gym.envs.tau_bench.users import STOP, LLMUser, ScriptedUser, UserContext, make_user

TASK = Task("t/0", "ava_li_1", "Your name is Ava Li and your zip code is 12345. You are busy. Cancel order #W1 "
            "because no longer needed.",
            (Action("find_user_id_by_name_zip", {"first_name": "Ava", "last_name": "Li", "zip": "12345"}),
             Action("cancel_pending_order", {"order_id": "#W1", "reason": "no longer needed"})), ())
RECORD = {"name": {"first_name": "Ava", "last_name": "Li"}, "address": {"zip": "12345"}, "email": "ava@example.com"}


def _user(goal=lambda: False, calls=None):
    u = ScriptedUser()
    first = u.reset(TASK, UserContext("retail", RECORD, goal, calls if calls is not None else []), seed=0)
    return u, first


def test_scripted_user_answers_from_the_task():
    u, first = _user()
    assert first == "Hi! I'd like to cancel my order #W1."
    assert "12345" in u.reply("Can I have your email?") and "Ava Li" in u.reply("What's your name and zip code?")
    assert "#W1" in u.reply("What is the order id?")
    assert "no longer needed" in u.reply("What is the reason for the cancellation?")
    assert "Yes" in u.reply("I will cancel #W1. Do you confirm (yes/no)?")
    assert u.reply("What's your favourite colour?") == "Sorry, I don't know that."
    assert "cancel my order #W1" in u.reply("Is there anything else I can help you with?")


def test_scripted_user_stops_when_the_goal_is_reached_or_stuck():
    done = {"v": False}
    u, _ = _user(goal=lambda: done["v"])
    assert STOP not in u.reply("Can I have your zip code?")
    done["v"] = True
    assert u.reply("Done!").endswith(STOP)
    assert u.reply("hello?") == STOP
    u, _ = _user()
    replies = [u.reply("blah") for _ in range(4)]
    assert STOP not in replies[0] and replies[-1].endswith(STOP)


def test_scripted_user_is_deterministic():
    a, fa = _user()
    b, fb = _user()
    msgs = ["Hi, your email?", "order id?", "confirm?", "anything else?"]
    assert fa == fb and [a.reply(m) for m in msgs] == [b.reply(m) for m in msgs]


def test_llm_user_protocol_and_seeding():
    calls = []

    def chat(messages, seed=None):
        calls.append((messages, seed))
        if len(messages) > 4:
            return "Great, thanks! ###STOP###"
        return f"reply {len(messages)}"

    u = LLMUser(chat)
    first = u.reset(TASK, UserContext("retail", RECORD), seed=7)
    assert first == "reply 2"
    msgs, seed = calls[0]
    assert msgs[0]["role"] == "system" and TASK.instruction in msgs[0]["content"] and "###STOP###" in msgs[0]["content"]
    assert msgs[1]["role"] == "user"
    assert u.reply("How can I help?") == "reply 4"
    assert calls[1][0][-1] == {"role": "user", "content": "How can I help?"}
    assert calls[1][0][-2] == {"role": "assistant", "content": "reply 2"}
    assert u.reply("ok") == STOP
    assert [c[1] for c in calls] == [7000, 7001, 7002]

    # a chat function without a seed parameter works too
    u2 = LLMUser(lambda messages: "hi")
    assert u2.reset(TASK, UserContext("retail", RECORD), seed=1) == "hi"


def test_llm_user_in_the_env():
    def chat(messages):
        return "###STOP###" if any("bye" in m["content"] for m in messages if m["role"] == "user") else "I need help."

    env = TauRetailEnv(data="generated", user="llm", user_chat_fn=chat)
    obs, _ = env.reset(seed=0, options={"task_index": 0})
    assert obs == "I need help."
    obs, r, term, trunc, info = env.step("bye")
    assert term and obs == STOP and info["end_reason"] == "user_stop"
    env2 = TauRetailEnv(data="generated", user=chat)   # a bare callable means an LLM user
    assert isinstance(env2.user, LLMUser)
    assert isinstance(make_user("scripted"), ScriptedUser)
